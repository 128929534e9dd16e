"""Hyperparameter checks and per-leaf resolution for the optax transformations.

A hyperparameter of :func:`sai_jax.scale_by_sai` is one of

* a number (Python or NumPy): checked here, when the transformation is built;
* a JAX array (what ``optax.inject_hyperparams`` passes, traced under ``jit``): its value cannot be
  read without a host sync (or at all, when traced), so only its shape is checked;
* a pytree of those, with the parameters' structure or a prefix of it (one value per leaf);
* a callable mapping the parameters (or updates) to such a pytree, as optax's masks do.

:func:`leaf_values` turns any of these into one value per leaf of a given tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sai_core import validate_hyperparameters

__all__ = [
    "check_learning_rate",
    "check_maximize",
    "check_numeric",
    "check_real_floating",
    "is_static_number",
    "leaf_values",
    "unpack_knob_overrides",
]


def is_static_number(value: Any) -> bool:
    """True for a real number whose value is known without touching an accelerator."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 and np.asarray(value).dtype.kind in "fiu"


def _check_array(name: str, value: Any) -> None:
    # JAX arrays (injected hyperparameters, tracers under jit) are not read: only their shape is.
    if np.ndim(value) != 0:
        raise ValueError(f"Invalid {name}: an array of shape {np.shape(value)} (must be a scalar)")


def check_numeric(name: str, value: Any) -> None:
    """Checks ``momentum``, ``weight_decay`` or ``eps``: a number, a JAX scalar, a tree or a callable.

    Raises:
        ValueError: naming ``name`` and the offending value.
    """
    if value is None:
        raise ValueError(f"Invalid {name}: None (must be a real number)")
    if callable(value) and not isinstance(value, jax.Array):
        return  # a schedule (weight_decay) or a per-leaf callable (its values: checked by init)
    leaves = jax.tree.leaves(value)
    if not leaves:
        raise ValueError(f"Invalid {name}: {value!r} (an empty tree holds no value)")
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            _check_array(name, leaf)
        elif callable(leaf):
            raise ValueError(f"Invalid {name}: a callable inside a tree ({leaf!r}); pass numbers per leaf")
        else:
            validate_hyperparameters(**{name: leaf})


def check_learning_rate(value: Any) -> None:
    """Checks ``learning_rate``: a number >= 0, a JAX scalar or a schedule (a callable).

    Raises:
        ValueError: naming ``learning_rate`` and the offending value.
    """
    if callable(value) and not isinstance(value, jax.Array):
        return
    if isinstance(value, jax.Array):
        _check_array("learning_rate", value)
        return
    validate_hyperparameters(lr=value, names={"lr": "learning_rate"})


def check_maximize(value: Any) -> None:
    """Checks ``maximize``: a bool, a tree of bools or a callable returning one.

    Raises:
        ValueError: naming ``maximize`` and the offending value.
    """
    if callable(value):
        return
    leaves = jax.tree.leaves(value)
    if not leaves:
        raise ValueError(f"Invalid maximize: {value!r} (must be a bool)")
    for leaf in leaves:
        validate_hyperparameters(maximize=leaf)


def check_real_floating(kind: str, tree: Any) -> None:
    """Checks that every leaf of ``tree`` (parameters or gradients) is a real floating-point array.

    SPEC.md step 0: integer, bool, complex and ``float0`` leaves (what ``jax.grad`` gives an
    integer input) have no g-SNR; they raise before anything changes. Dtypes are static, so this
    costs nothing under ``jit``.

    Raises:
        ValueError: naming ``kind``, the leaf's path and its dtype.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path) or "the root"
            raise ValueError(
                f"Invalid {kind} at {where}: dtype {dtype if dtype is not None else type(leaf).__name__} "
                "(SGD-SaI needs real floating-point arrays; keep integer, bool, complex and float0 "
                "leaves out of the optimizer, e.g. with optax.partition)"
            )


def leaf_values(name: str, value: Any, tree: Any, treedef: Any) -> list[Any]:
    """One value of hyperparameter ``name`` per leaf of ``tree`` (whose structure is ``treedef``).

    ``value`` is a scalar (every leaf), a pytree whose structure is a prefix of ``tree``'s, or a
    callable ``tree -> such a pytree``.

    Raises:
        ValueError: when the pytree does not match ``tree``'s structure.
    """
    if callable(value) and not isinstance(value, jax.Array):
        value = value(tree)
    try:
        full = jax.tree.broadcast(value, tree)
        return treedef.flatten_up_to(full)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Invalid {name}: a tree whose structure {jax.tree.structure(value)} is not a prefix of the "
            f"parameters' structure {treedef}"
        ) from error


def unpack_knob_overrides(knob_overrides: dict[str, Any]) -> dict[str, Any]:
    """The knob overrides a factory received, also when they arrive nested.

    ``optax.inject_hyperparams`` binds the factory's signature and passes a ``**knob_overrides``
    parameter on as one keyword argument named ``knob_overrides`` (a dict, static because it is
    not numeric); this unpacks that form so that knobs work under ``inject_hyperparams``.

    Raises:
        ValueError: when the nested value is not a mapping.
    """
    knobs = dict(knob_overrides)
    nested = knobs.pop("knob_overrides", {})
    if not isinstance(nested, Mapping):
        raise ValueError(f"Invalid knob_overrides: {nested!r} (must be a mapping of knob names to values)")
    overlap = sorted(set(nested) & set(knobs))
    if overlap:
        raise ValueError(f"Invalid knob_overrides: {overlap} given twice")
    return {**nested, **knobs}
