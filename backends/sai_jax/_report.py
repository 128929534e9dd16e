"""The g-SNR of a JAX model, leaf by leaf: ``gsnr_report`` (one gradient) and ``scale_report`` (the
frozen scales in an ``sgd_sai`` / ``scale_by_sai`` state).

Both return a :class:`sai_core.GsnrReport`; ``sai-gsnr`` renders it. The numbers are
``sai_core``'s (:func:`sai_core.report_from_gradients`, :func:`sai_core.report_from_scales`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sai_core import (
    DEFAULT_HYPERPARAMETERS,
    DEFAULT_PRESET,
    GsnrReport,
    report_from_gradients,
    report_from_scales,
    resolve_config,
)

from ._transform import ScaleBySaIState

__all__ = ["gsnr_report", "scale_report"]


# jax's stubs type a PyTreeDef without flatten_up_to / unflatten: Any where those are used.
TreeDef = Any


def _leaf_name(path: Any) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".") or "(root)"


def _is_differentiable(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(leaf.dtype, jnp.inexact)


def gsnr_report(
    params: Any,
    loss_fn: Callable[[Any], Any],
    *,
    preset: str = DEFAULT_PRESET,
    eps: float = DEFAULT_HYPERPARAMETERS["eps"],
    **knob_overrides: Any,
) -> GsnrReport:
    """The g-SNR ``G`` and scale ``S`` that ``sgd_sai`` would freeze if this were its first update.

    Differentiates ``loss_fn(params)`` with respect to every floating-point array leaf of
    ``params`` (other leaves, such as an Equinox module's activation functions, are held fixed),
    in ``jax.tree`` order. JAX has no absent gradient: a leaf the loss does not use gets zeros,
    which leave it waiting (its row has a note instead of ``G``).

    Args:
        params: a pytree of arrays (or any pytree with array leaves: an Equinox module).
        loss_fn: returns the scalar loss of one batch for ``params``.
        preset: the preset whose ``S`` is shown (``"sgd-sai"``: ``S = G``; ``"paper"``: ``G / M``).
        eps: the g-SNR denominator guard.
        **knob_overrides: knob values overriding the preset's.

    Returns:
        A :class:`sai_core.GsnrReport` (names are the leaves' paths, ``"w"`` or ``"0.b"``).

    Raises:
        ValueError: ``params`` has no floating-point array leaf, or ``loss_fn`` does not return
            a scalar floating-point value.

    Examples:
        >>> import jax.numpy as jnp
        >>> from sai_jax import gsnr_report
        >>> target = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([1.0, 0.0, -1.0])}
        >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
        >>> loss_fn = lambda p: (p["w"] * target["w"]).sum() + (p["b"] * target["b"]).sum()
        >>> [(r.name, r.shape, round(r.gsnr, 4)) for r in gsnr_report(params, loss_fn).rows]
        [('b', (3,), 1.4142), ('w', (2, 2), 4.2426)]
    """
    if not callable(loss_fn):
        raise TypeError(f"Invalid loss_fn: {loss_fn!r} (expected a callable returning the loss)")
    config = resolve_config(preset, **knob_overrides)
    with_paths, treedef_ = jax.tree_util.tree_flatten_with_path(params)
    treedef: TreeDef = treedef_
    leaves = [leaf for _, leaf in with_paths]
    chosen = [i for i, leaf in enumerate(leaves) if _is_differentiable(leaf)]
    if not chosen:
        raise ValueError(f"Invalid params: {type(params).__name__} has no floating-point array leaf to differentiate")

    def loss_of(values: list[Any]) -> Any:
        full = list(leaves)
        for i, value in zip(chosen, values):
            full[i] = value
        return loss_fn(treedef.unflatten(full))

    values = [jnp.asarray(leaves[i]) for i in chosen]
    # Checked on shapes only (no computation) before differentiating, for a message that names loss_fn.
    shape = jax.eval_shape(loss_of, values)
    if getattr(shape, "shape", None) != () or not jnp.issubdtype(shape.dtype, jnp.floating):
        described = (
            f"a value of shape {shape.shape} and dtype {shape.dtype}" if hasattr(shape, "shape") else repr(shape)
        )
        raise ValueError(f"Invalid loss_fn: loss_fn(params) returned {described} (expected a scalar floating value)")
    grads = jax.grad(loss_of)(values)
    return report_from_gradients(
        [_leaf_name(with_paths[i][0]) for i in chosen], grads, eps=eps, config=config, framework="jax"
    )


def scale_report(state: Any, *, preset: str = DEFAULT_PRESET, **knob_overrides: Any) -> GsnrReport:
    """The frozen scales held in an optax state that contains a :class:`sai_jax.ScaleBySaIState`.

    ``state`` may be the state of ``sgd_sai``, ``sgd_sai_groups``, ``scale_by_sai`` or any optax
    wrapper around them. The state does not record the preset: pass the one the optimizer was
    built with (it decides whether ``G`` is ``S`` or ``S * M``).

    Raises:
        ValueError: no ``ScaleBySaIState`` (or more than one) in ``state``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from sai_jax import sgd_sai, scale_report
        >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
        >>> opt = sgd_sai()
        >>> grads = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.zeros(3)}
        >>> _, state = opt.update(grads, opt.init(params), params)
        >>> [(r.name, r.gsnr, r.note) for r in scale_report(state).rows][0]   # b: zero gradient
        ('b', None, 'not initialized yet')
        >>> round(scale_report(state).rows[1].scale, 4)
        4.2426
    """
    config = resolve_config(preset, **knob_overrides)
    found = [
        node
        for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScaleBySaIState))
        if isinstance(node, ScaleBySaIState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"Invalid state: {len(found)} ScaleBySaIState in it (expected the state of sai_jax.sgd_sai, "
            "sgd_sai_groups or scale_by_sai, which holds exactly one)"
        )
    (sai,) = found
    scales, scale_treedef = jax.tree_util.tree_flatten_with_path(sai.scale)
    treedef: TreeDef = scale_treedef
    flags = treedef.flatten_up_to(sai.initialized)
    buffers = [None] * len(scales) if sai.momentum_buffer is None else treedef.flatten_up_to(sai.momentum_buffer)
    initialized = [bool(flag) for flag in flags]
    entries = [
        (_leaf_name(path), None if buffer is None else tuple(jnp.shape(buffer)), float(scale) if done else None)
        for (path, scale), done, buffer in zip(scales, initialized, buffers)
    ]
    max_gsnr = float(sai.max_gsnr) if any(initialized) else None
    return report_from_scales(entries, max_gsnr, config=config, framework="jax")
