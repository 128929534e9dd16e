"""The user-facing optimizers: ``sgd_sai`` (one group) and ``sgd_sai_groups`` (several).

Both are chains of optax building blocks: :func:`sai_jax.scale_by_sai` (the direction ``S m``),
``optax.add_decayed_weights`` (decoupled weight decay, not scaled by ``S``) and
``optax.scale_by_learning_rate``, so that ``theta <- theta - lr * wd * theta - lr * S * m``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import jax
import optax

from ._hyperparameters import check_learning_rate, check_maximize, check_numeric, unpack_knob_overrides
from ._transform import scale_by_sai

__all__ = ["GROUP_KEYS", "sgd_sai", "sgd_sai_groups"]

# Keys a group of sgd_sai_groups may set, and the defaults of the optional ones (sgd_sai's).
GROUP_KEYS: tuple[str, ...] = ("learning_rate", "momentum", "weight_decay", "eps", "maximize")
_GROUP_DEFAULTS: dict[str, Any] = {"momentum": 0.9, "weight_decay": 1e-2, "eps": 1e-8, "maximize": False}


def _check_scalar_or_schedule(name: str, value: Any) -> None:
    if not jax.tree_util.treedef_is_leaf(jax.tree.structure(value)):
        raise ValueError(
            f"Invalid {name}: a pytree {jax.tree.structure(value)} (must be a number, a JAX scalar or a "
            "schedule; for per-leaf values use sgd_sai_groups)"
        )


def sgd_sai(
    learning_rate: optax.ScalarOrSchedule,
    momentum: Any = 0.9,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    eps: Any = 1e-8,
    *,
    preset: str = "paper",
    maximize: bool = False,
    mask: Any = None,
    accumulator_dtype: Any = None,
    **knob_overrides: Any,
) -> optax.GradientTransformationExtraArgs:
    """SGD-SaI: SGD with momentum and a per-tensor learning-rate scale fixed at the first step.

    .. math::

        \\theta \\leftarrow \\theta - \\eta \\lambda \\theta - \\eta S m

    with ``S`` and ``m`` from :func:`sai_jax.scale_by_sai`, ``eta`` the learning rate at this
    step and ``lambda`` the weight decay (decoupled: multiplied by ``eta``, not by ``S``).

    Every numeric hyperparameter is a plain argument, so ``optax.inject_hyperparams(sgd_sai)``
    works (pass ``static_args=("mask",)`` when ``mask`` is a callable, as for ``optax.adamw``).

    Args:
        learning_rate: ``eta >= 0``, a JAX scalar or an optax schedule. Its meaning depends on
            the preset: without normalisation a tensor's step is ~``sqrt(n)`` times larger.
        momentum: ``mu`` in ``[0, 1)``; ``0`` (a number) keeps no momentum buffer.
        weight_decay: ``lambda >= 0``, a JAX scalar or a schedule.
        eps: g-SNR denominator guard, ``>= 0``.
        preset: a name from ``sai_core.PRESETS`` (``"paper"`` by default).
        maximize: ascend instead of descend.
        mask: optax weight-decay mask: a tree of bools (or a prefix of the params' tree) or a
            callable returning one; ``False`` leaves are not decayed.
        accumulator_dtype: dtype of the momentum buffers (``None``: each parameter's dtype).
        **knob_overrides: knob values overriding the preset's.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` (a chain whose first state is a
        :class:`sai_jax.ScaleBySaIState`).

    Raises:
        ValueError: for an invalid hyperparameter, preset or knob value (naming it).
        TypeError: for a keyword that is neither an argument nor a knob.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.0, 1.0])}
        >>> loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum((p["b"] - 2.0) ** 2)
        >>> opt = sgd_sai(learning_rate=0.1)
        >>> state = opt.init(params)
        >>> for _ in range(100):
        ...     updates, state = opt.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> float(loss(params)) < 1e-2
        True
    """
    check_learning_rate(learning_rate)
    check_numeric("weight_decay", weight_decay)
    _check_scalar_or_schedule("weight_decay", weight_decay)
    knob_overrides = unpack_knob_overrides(knob_overrides)
    return optax.chain(
        scale_by_sai(
            momentum,
            eps,
            preset=preset,
            maximize=maximize,
            accumulator_dtype=accumulator_dtype,
            **knob_overrides,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def _group_settings(groups: Mapping[Hashable, Mapping[str, Any]]) -> dict[Hashable, dict[str, Any]]:
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"Invalid groups: {groups!r} (must be a non-empty mapping label -> hyperparameters)")
    settings = {}
    for label, group in groups.items():
        if not isinstance(group, Mapping):
            raise ValueError(f"Invalid groups[{label!r}]: {group!r} (must be a mapping of hyperparameters)")
        unknown = sorted(set(group) - set(GROUP_KEYS))
        if unknown:
            raise ValueError(f"Invalid groups[{label!r}]: unknown key(s) {unknown} (expected {list(GROUP_KEYS)})")
        if "learning_rate" not in group:
            raise ValueError(f"Invalid groups[{label!r}]: no 'learning_rate'")
        merged = {**_GROUP_DEFAULTS, **group}
        try:
            check_learning_rate(merged["learning_rate"])
            for name in ("momentum", "eps"):
                if callable(merged[name]) and not isinstance(merged[name], jax.Array):
                    raise ValueError(f"Invalid {name}: {merged[name]!r} (a group's {name} is a number)")
                _check_scalar_or_schedule(name, merged[name])
                check_numeric(name, merged[name])
            _check_scalar_or_schedule("weight_decay", merged["weight_decay"])
            check_numeric("weight_decay", merged["weight_decay"])
            check_maximize(merged["maximize"])
            if not isinstance(merged["maximize"], bool):
                raise ValueError(f"Invalid maximize: {merged['maximize']!r} (must be a bool)")
        except ValueError as error:
            raise ValueError(f"groups[{label!r}]: {error}") from error
        settings[label] = merged
    return settings


def sgd_sai_groups(
    groups: Mapping[Hashable, Mapping[str, Any]],
    param_labels: Any,
    *,
    preset: str = "paper",
    accumulator_dtype: Any = None,
    **knob_overrides: Any,
) -> optax.GradientTransformationExtraArgs:
    """SGD-SaI with parameter groups (different hyperparameters) sharing one normaliser ``M``.

    The equivalent of torch's ``param_groups``: every leaf of the parameters carries a label,
    and each label's group sets its own ``learning_rate`` (required; a number or a schedule),
    ``momentum``, ``weight_decay``, ``eps`` and ``maximize`` (defaults as :func:`sgd_sai`).
    The g-SNR normaliser ``M`` is the largest over *all* leaves, as SPEC.md requires; this is
    why groups must not be built with ``optax.partition`` over separate ``sgd_sai`` instances
    (each would normalise by its own maximum).

    Args:
        groups: label -> hyperparameters (keys from :data:`GROUP_KEYS`).
        param_labels: a pytree of labels with the parameters' structure (or a prefix of it), or a
            callable mapping the parameters to one, as for ``optax.partition``.
        preset: a name from ``sai_core.PRESETS`` (knobs are optimizer-wide).
        accumulator_dtype: dtype of the momentum buffers (``None``: each parameter's dtype).
        **knob_overrides: knob values overriding the preset's.

    Returns:
        An ``optax.GradientTransformationExtraArgs``: ``scale_by_sai`` with per-leaf momentum,
        eps and maximize, then ``optax.partition`` of weight decay and learning rate per group.

    Raises:
        ValueError: for an invalid group (naming its label and the hyperparameter) or a label
            with no group.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
        >>> opt = sgd_sai_groups(
        ...     {"decay": {"learning_rate": 0.1}, "no_decay": {"learning_rate": 0.1, "weight_decay": 0.0}},
        ...     param_labels={"w": "decay", "b": "no_decay"},
        ... )
        >>> state = opt.init(params)
        >>> grads = {"w": jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "b": jnp.array([1.0, -1.0, 0.5])}
        >>> updates, state = opt.update(grads, state, params)
        >>> float(state[0].max_gsnr) > 0
        True
    """
    settings = _group_settings(groups)
    knob_overrides = unpack_knob_overrides(knob_overrides)

    def per_leaf(key: str):
        def values(tree: Any) -> Any:
            labels = param_labels(tree) if callable(param_labels) else param_labels

            def lookup(label: Hashable) -> Any:
                if label not in settings:
                    raise ValueError(f"Invalid param_labels: label {label!r} has no group (groups: {list(settings)})")
                return settings[label][key]

            return jax.tree.map(lookup, labels)

        return values

    inner = {
        label: optax.chain(
            optax.add_decayed_weights(group["weight_decay"]),
            optax.scale_by_learning_rate(group["learning_rate"]),
        )
        for label, group in settings.items()
    }
    return optax.chain(
        scale_by_sai(
            per_leaf("momentum"),
            per_leaf("eps"),
            preset=preset,
            maximize=per_leaf("maximize"),
            accumulator_dtype=accumulator_dtype,
            **knob_overrides,
        ),
        optax.partition(inner, param_labels),
    )
