"""``scale_by_sai``: the SGD-SaI direction ``S * m`` as an optax gradient transformation.

The math is :mod:`sai_core`'s (``raw_gsnr``, ``scale_from_gsnr``, ``update_momentum``) run with
``xp=jax.numpy``. The first update computes every leaf's g-SNR and the frozen normaliser ``M``
inside the first branch of a ``jax.lax.cond`` on ``count == 0``; later updates take the other
branch, which only passes the stored scales through, so under ``jit`` the statistics are compiled
once and executed once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sai_core import SaIConfig, compute_dtype, raw_gsnr, resolve_config, scale_from_gsnr, update_momentum

from ._hyperparameters import check_maximize, check_numeric, is_static_number, leaf_values, unpack_knob_overrides

__all__ = ["ScaleBySaIState", "scale_by_sai"]


class ScaleBySaIState(NamedTuple):
    """State of :func:`scale_by_sai` (a pytree: it jits, shards and checkpoints like any other).

    Attributes:
        count: number of updates applied; ``0`` means the next update initialises the scales.
        max_gsnr: the frozen normaliser ``M`` (largest raw g-SNR of the first update); ``0``
            before it.
        scale: the learning-rate scale ``S`` of every leaf, frozen at the first update; ``0``
            before it.
        momentum_buffer: the momentum buffer of every leaf, ``None`` at a leaf whose momentum is
            the number ``0``, and ``None`` as a whole when no leaf keeps a buffer.
    """

    count: jax.Array  # shape=(), dtype=int32
    max_gsnr: jax.Array  # shape=(), dtype=float32 (float64 when any leaf is float64)
    scale: optax.Updates  # tree like params; leaves shape=(), dtype=float32 (float64 for float64 leaves)
    momentum_buffer: optax.Updates | None  # tree like params; leaves like params (or accumulator_dtype)


def _keeps_buffer(momentum: Any) -> bool:
    # Only a momentum known to be exactly 0 when the transformation is built drops the buffer; an
    # array momentum (injected, traced) may change later, so its leaf always keeps one.
    return not (is_static_number(momentum) and float(momentum) == 0.0)


def _maximize_flags(values: list[Any]) -> list[bool]:
    for value in values:
        if not isinstance(value, bool):
            raise ValueError(f"Invalid maximize: {value!r} (must be a bool per leaf)")
    return values


def _initial_scales(
    grads: list[jax.Array], epsilons: list[jax.Array], scale_dtypes: list[Any], max_dtype: Any, config: SaIConfig
) -> tuple[list[jax.Array], jax.Array]:
    """Every leaf's scale ``S = G / M`` and the normaliser ``M``, from the first gradients."""
    if not grads:
        return [], jnp.zeros((), max_dtype)
    raw = [
        raw_gsnr(g, eps=eps, config=config, xp=jnp).astype(max_dtype)
        for g, eps in zip(grads, epsilons)
    ]
    max_gsnr = jnp.max(jnp.stack(raw))
    scales = [
        scale_from_gsnr(value, max_gsnr, config=config, xp=jnp).astype(dtype) for value, dtype in zip(raw, scale_dtypes)
    ]
    return scales, max_gsnr


@functools.lru_cache(maxsize=None)
def _first_step_branches(config: SaIConfig) -> tuple[Callable[[tuple], Any], Callable[[tuple], Any]]:
    """The two branches of the first-step ``lax.cond``, one pair per configuration.

    JAX caches a branch's trace by the function's identity, so every transformation with the same
    knobs shares them: an eager loop (or ``optax.inject_hyperparams``, which rebuilds the
    transformation at every update) traces and compiles the condition once, not at every step.
    Operands: ``(grads, epsilons, scales, max_gsnr)``.
    """

    def initialize(operands: tuple) -> tuple[list[jax.Array], jax.Array]:
        grads, epsilons, scales, max_gsnr = operands
        return _initial_scales(grads, epsilons, [s.dtype for s in scales], max_gsnr.dtype, config)

    def keep(operands: tuple) -> tuple[list[jax.Array], jax.Array]:
        _, _, scales, max_gsnr = operands
        return list(scales), max_gsnr

    return initialize, keep


def scale_by_sai(
    momentum: Any = 0.9,
    eps: Any = 1e-8,
    *,
    preset: str = "paper",
    maximize: Any = False,
    accumulator_dtype: Any = None,
    **knob_overrides: Any,
) -> optax.GradientTransformationExtraArgs:
    """Scales updates by the SGD-SaI direction ``S * m`` (no learning rate, no weight decay).

    For every leaf with gradient ``g`` (negated first when ``maximize``):

    .. math::

        G &= \\lVert g \\rVert_2 / (\\operatorname{std}(g) + \\epsilon), \\quad
            S = G / M, \\quad M = \\max_{\\text{leaves}} G
            \\qquad \\text{(first update only; then frozen)} \\\\
        m &\\leftarrow \\mu m + (1 - \\mu) g \\quad (m = g \\text{ at the first update}) \\\\
        u &= S m

    ``preset`` and the knob overrides select the published variants (``sai_core.PRESETS``):
    without normalisation (``sgd-sai-1.0.3``, ``pytorch-optimizer-4``, ``sgd-sai-1.1.0``) a
    leaf's step is about ``sqrt(n)`` times larger, so learning rates are not interchangeable.

    Per-leaf hyperparameters (parameter groups): ``momentum``, ``eps`` and ``maximize`` may each
    be a pytree with the parameters' structure (or a prefix of it), or a callable mapping the
    parameters to one; every leaf still shares the one normaliser ``M``. A leaf whose momentum is
    the number ``0`` keeps no buffer. :func:`sai_jax.sgd_sai_groups` builds these trees from
    labels.

    Args:
        momentum: ``mu`` in ``[0, 1)``; a JAX array (``optax.inject_hyperparams``) is accepted
            unread, and then every leaf keeps a buffer.
        eps: g-SNR denominator guard, ``>= 0``.
        preset: a name from ``sai_core.PRESETS``.
        maximize: ascend instead of descend (bool, per-leaf tree or callable).
        accumulator_dtype: dtype of the momentum buffers; ``None`` keeps each parameter's dtype
            (a bfloat16 parameter keeps a bfloat16 buffer; statistics and the update itself are
            computed in float32 regardless).
        **knob_overrides: knob values overriding the preset's (``sai_core.KNOB_VALUES``).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`ScaleBySaIState`.
        Its updates have the gradients' dtypes.

    Raises:
        ValueError: for an invalid hyperparameter, preset or knob value (naming it).
        TypeError: for a keyword that is not a knob.

    Examples:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_sai(momentum=0.9)
        >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(3)}
        >>> state = tx.init(params)
        >>> grads = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([1.0, 0.0, -1.0])}
        >>> updates, state = tx.update(grads, state)
        >>> [round(float(s), 4) for s in jax.tree.leaves(state.scale)]  # S of b, then w
        [0.3333, 1.0]
        >>> int(state.count)
        1
    """
    config = resolve_config(preset, **unpack_knob_overrides(knob_overrides))
    check_numeric("momentum", momentum)
    check_numeric("eps", eps)
    check_maximize(maximize)
    if accumulator_dtype is not None:
        accumulator_dtype = jnp.dtype(accumulator_dtype)
        if not jnp.issubdtype(accumulator_dtype, jnp.floating):
            raise ValueError(f"Invalid accumulator_dtype: {accumulator_dtype} (must be a floating dtype)")

    def init_fn(params: optax.Params) -> ScaleBySaIState:
        leaves, treedef = jax.tree.flatten(params)
        momenta = leaf_values("momentum", momentum, params, treedef)
        if leaves:  # values a per-leaf callable returns are checked here, once
            check_numeric("momentum", momenta)
            check_numeric("eps", leaf_values("eps", eps, params, treedef))
            _maximize_flags(leaf_values("maximize", maximize, params, treedef))
        dtypes = [compute_dtype(p, xp=jnp) for p in leaves]
        buffers = [
            jnp.zeros_like(p, dtype=accumulator_dtype or p.dtype) if _keeps_buffer(mu) else None
            for p, mu in zip(leaves, momenta)
        ]
        return ScaleBySaIState(
            count=jnp.zeros([], jnp.int32),
            max_gsnr=jnp.zeros([], jnp.result_type(*dtypes) if dtypes else jnp.float32),
            scale=treedef.unflatten([jnp.zeros([], d) for d in dtypes]),
            momentum_buffer=treedef.unflatten(buffers) if any(b is not None for b in buffers) else None,
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleBySaIState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleBySaIState]:
        del params, extra_args
        grads, treedef = jax.tree.flatten(updates)
        momenta = leaf_values("momentum", momentum, updates, treedef)
        epsilons = leaf_values("eps", eps, updates, treedef)
        flags = _maximize_flags(leaf_values("maximize", maximize, updates, treedef))
        grads = [-g if flag else g for g, flag in zip(grads, flags)]
        old_scales = treedef.flatten_up_to(state.scale)
        if state.momentum_buffer is None:
            old_buffers = [None] * len(grads)
        else:
            old_buffers = treedef.flatten_up_to(state.momentum_buffer)
        for index, (mu, buffer) in enumerate(zip(momenta, old_buffers)):
            if _keeps_buffer(mu) != (buffer is not None):
                raise ValueError(
                    f"Invalid momentum: {mu!r} for leaf {index}, whose state "
                    f"{'has no' if buffer is None else 'has a'} momentum buffer; the state was "
                    "initialised with a different momentum (call init again)"
                )
        first = state.count == 0
        epsilons = [jnp.asarray(e, compute_dtype(g, xp=jnp)) for e, g in zip(epsilons, grads)]
        # The statistics run in the first branch only: under jit, later steps never execute them.
        initialize, keep = _first_step_branches(config)
        scales, max_gsnr = jax.lax.cond(first, initialize, keep, (grads, epsilons, old_scales, state.max_gsnr))

        new_updates, new_buffers = [], []
        for g, buffer, mu, scale in zip(grads, old_buffers, momenta, scales):
            dtype = compute_dtype(g, xp=jnp)
            mu = jnp.asarray(mu, dtype)
            g_compute = g.astype(dtype)
            if buffer is None:  # momentum statically 0: the direction is the gradient itself
                direction = update_momentum(None, g_compute, momentum=mu, first=True, config=config, xp=jnp)
                new_buffers.append(None)
            else:
                new_buffer = update_momentum(
                    buffer.astype(dtype), g_compute, momentum=mu, first=first, config=config, xp=jnp
                ).astype(buffer.dtype)
                new_buffers.append(new_buffer)
                # The update reads the stored (rounded) buffer, as the reference does: XLA then
                # fuses it like SGD's trace instead of recomputing an unrounded copy.
                direction = new_buffer.astype(dtype)
            new_updates.append((scale.astype(dtype) * direction).astype(g.dtype))
        new_state = ScaleBySaIState(
            count=optax.safe_increment(state.count),
            max_gsnr=max_gsnr,
            scale=treedef.unflatten(scales),
            momentum_buffer=None if state.momentum_buffer is None else treedef.unflatten(new_buffers),
        )
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
