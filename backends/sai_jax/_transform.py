"""``scale_by_sai``: the SGD-SaI direction ``S * m`` as an optax gradient transformation.

The math is :mod:`sai_core`'s (``is_informative``, ``raw_gsnr``, ``scale_from_gsnr``,
``update_momentum``) run with ``xp=jax.numpy``. A leaf initializes at its first *informative*
gradient (finite and, under ``zero_gradient="defer"``, not all zero), which may come at any
update. The initialization work sits in one branch of a ``jax.lax.cond`` taken only while some
non-empty leaf is still uninitialized: it checks the gradients, computes the g-SNRs of the leaves
initializing now and, the first time any leaf initializes, the frozen normaliser ``M``. Once every
leaf is initialized the other branch, which passes the stored scales through, is the only one
that runs: under ``jit`` the statistics are compiled once and not executed at steady state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sai_core import (
    DEFAULT_HYPERPARAMETERS,
    DEFAULT_PRESET,
    SaIConfig,
    compute_dtype,
    is_informative,
    raw_gsnr,
    resolve_config,
    scale_from_gsnr,
    update_momentum,
)

from ._hyperparameters import (
    check_maximize,
    check_numeric,
    check_real_floating,
    is_static_number,
    leaf_values,
    unpack_knob_overrides,
)

__all__ = ["ScaleBySaIState", "scale_by_sai"]


class ScaleBySaIState(NamedTuple):
    """State of :func:`scale_by_sai` (a pytree: it jits, shards and checkpoints like any other).

    Attributes:
        count: number of updates applied (saturating). Informational: whether a leaf still
            initializes is decided by ``initialized``, not by ``count``.
        max_gsnr: the frozen normaliser ``M``: the largest raw g-SNR among the leaves initialized
            at the first update at which any leaf initialized; ``0`` while no leaf is initialized
            (then ``M`` is unset). Used only by presets with ``normalize="max"``.
        scale: the learning-rate scale ``S`` of every leaf, frozen when the leaf initializes;
            ``0`` while it is uninitialized.
        initialized: whether each leaf has received its first informative gradient. An
            uninitialized leaf gets an update of exactly 0 and keeps its momentum buffer. A
            zero-size leaf never initializes.
        momentum_buffer: the momentum buffer of every leaf (zeros until the leaf initializes),
            ``None`` at a leaf whose momentum is the number ``0``, and ``None`` as a whole when
            no leaf keeps a buffer.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32 (shadows tuple.count, as in optax's states)
    max_gsnr: jax.Array  # shape=(), dtype=float32 (float64 when any leaf is float64)
    scale: optax.Updates  # tree like params; leaves shape=(), dtype=float32 (float64 for float64 leaves)
    initialized: optax.Updates  # tree like params; leaves shape=(), dtype=bool
    momentum_buffer: optax.Updates | None  # tree like params; leaves like params (or accumulator_dtype)


def _keeps_buffer(momentum: Any) -> bool:
    # Only a momentum known to be exactly 0 when the transformation is built drops the buffer; an
    # array momentum (injected, traced) may change later, so its leaf always keeps one.
    return not (is_static_number(momentum) and float(momentum) == 0.0)


def _keeps_any_buffer(momentum: Any, momenta: list[Any]) -> bool:
    """Whether the state holds a ``momentum_buffer`` tree at all (else the field is ``None``).

    Decided from the leaves' momenta; without leaves (an empty tree, or the placeholder
    ``optax.tree_map_params`` initializes with) from the argument itself, so that the state's
    structure is the one real parameters would get. A per-leaf callable may list the values it
    can return in a ``choices`` attribute (``sgd_sai_groups`` does: its groups' momenta).
    """
    if momenta:
        return any(_keeps_buffer(mu) for mu in momenta)
    if callable(momentum) and not isinstance(momentum, jax.Array):
        choices = getattr(momentum, "choices", None)
        if choices is None:
            return True  # what it returns for real parameters is unknown here
        return any(_keeps_buffer(mu) for mu in choices)
    return any(_keeps_buffer(mu) for mu in jax.tree.leaves(momentum))


def _is_tree_map_params_placeholder(params: Any) -> bool:
    """Whether ``init`` was called by ``optax.tree_map_params`` (with its leafless placeholder).

    ``tree_map_params`` initializes the optimizer with an instance of a private optax class and
    applies its ``f`` wherever that instance appears in the returned state. Recognised by class
    name and module: a user's empty parameter tree is a container, never this class.
    """
    kind = type(params)
    return kind.__name__ == "_ParamsPlaceholder" and kind.__module__.startswith("optax")


def _check_matching_gradients(grads: list[jax.Array], buffers: list[Any], params: Any, treedef: Any) -> None:
    """SPEC.md step 0: a gradient whose shape differs from its parameter's raises, naming the leaf.

    Shapes are static, so this costs nothing under ``jit``; without it a gradient of shape
    ``(1, n)`` for an ``(m, n)`` parameter would silently broadcast into the buffer and the update.
    """
    references: list[Any] = list(buffers)
    if params is not None:
        try:
            references = [b if b is not None else p for b, p in zip(buffers, treedef.flatten_up_to(params))]
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"Invalid params: structure {jax.tree.structure(params)} does not match the gradients' "
                f"structure {treedef}"
            ) from error
    for index, (grad, reference) in enumerate(zip(grads, references)):
        if reference is not None and jnp.shape(grad) != jnp.shape(reference):
            path = jax.tree_util.tree_flatten_with_path(treedef.unflatten(grads))[0][index][0]
            raise ValueError(
                f"Invalid gradient at {jax.tree_util.keystr(path) or 'the root'}: shape {jnp.shape(grad)}, "
                f"but the parameter has shape {jnp.shape(reference)}"
            )


def _maximize_flags(values: list[Any]) -> list[bool]:
    for value in values:
        if not isinstance(value, bool):
            raise ValueError(f"Invalid maximize: {value!r} (must be a bool per leaf)")
    return values


def _false() -> jax.Array:
    return jnp.zeros((), jnp.bool_)


def _skip_leaf(grad: jax.Array, eps: jax.Array, zero: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An initialized leaf: nothing to check, nothing to compute."""
    del grad, eps
    return _false(), zero


def _examine_leaf(config: SaIConfig, grad: jax.Array, eps: jax.Array, zero: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A waiting leaf: whether its gradient initializes it now, and then its raw g-SNR (else 0)."""
    informative = is_informative(grad, config=config, xp=jnp)

    def statistic(grad: jax.Array, eps: jax.Array) -> jax.Array:
        return raw_gsnr(grad, eps=eps, config=config, xp=jnp).astype(zero.dtype)

    return informative, jax.lax.cond(informative, statistic, lambda grad, eps: zero, grad, eps)


@functools.cache
def _initialization_branches(config: SaIConfig) -> tuple[Callable[[tuple], Any], Callable[[tuple], Any]]:
    """The two branches of the initialization ``lax.cond``, one pair per configuration.

    JAX caches a branch's trace by the function's identity, so every transformation with the same
    knobs shares them: an eager loop (or ``optax.inject_hyperparams``, which rebuilds the
    transformation at every update) traces and compiles the condition once, not at every step.
    Operands: ``(grads, epsilons, scales, initialized, max_gsnr)``, lists per leaf except
    ``max_gsnr``. Both return ``(scales, initialized, init_now, max_gsnr)``.
    """

    def initialize(operands: tuple) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array], jax.Array]:
        grads, epsilons, scales, initialized, max_gsnr = operands
        zero = jnp.zeros((), max_gsnr.dtype)
        init_now, gsnrs = [], []
        for grad, eps, done in zip(grads, epsilons, initialized):
            if grad.size == 0:  # never initialized, never changes (and its statistic is undefined)
                init_now.append(_false())
                gsnrs.append(zero)
                continue
            # One cond per leaf: an initialized leaf costs nothing here, a waiting one only the
            # informative check (a few reductions over that leaf), and the statistics run only for
            # a leaf that initializes now. So a parameter whose gradient stays zero forever costs
            # a check of its own gradient per step, not a pass over every leaf.
            now, value = jax.lax.cond(done, _skip_leaf, functools.partial(_examine_leaf, config), grad, eps, zero)
            init_now.append(now)
            gsnrs.append(value)
        # M is set at the first update at which any leaf initializes (it is unset exactly when no
        # leaf was initialized before), over the leaves initializing then; later it stays frozen.
        unset = ~functools.reduce(jnp.logical_or, initialized)
        any_now = functools.reduce(jnp.logical_or, init_now)
        # G >= 0 always, so 0 is a neutral filler for the leaves that do not initialize now.
        first_max = jnp.max(jnp.stack([jnp.where(now, g, 0) for now, g in zip(init_now, gsnrs)]))
        max_gsnr = jnp.where(unset & any_now, first_max, max_gsnr)
        new_scales = [
            jnp.where(now, scale_from_gsnr(g, max_gsnr, config=config, xp=jnp).astype(old.dtype), old)
            for now, g, old in zip(init_now, gsnrs, scales)
        ]
        new_initialized = [done | now for done, now in zip(initialized, init_now)]
        return new_scales, new_initialized, init_now, max_gsnr

    def keep(operands: tuple) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array], jax.Array]:
        _, _, scales, initialized, max_gsnr = operands
        return list(scales), list(initialized), [_false() for _ in scales], max_gsnr

    return initialize, keep


def _placeholder_state(placeholder: Any, keeps_buffer: bool) -> ScaleBySaIState:
    """The state ``optax.tree_map_params`` matches against a real one.

    Only ``momentum_buffer`` is a copy of the parameters (shape and sharding like theirs), so only
    it holds the placeholder, where ``tree_map_params`` applies its ``f``. ``scale`` and
    ``initialized`` have the parameters' tree but one scalar per leaf: a leaf here makes
    ``tree_map_params`` hand each whole tree to ``transform_non_params``, with ``count`` and
    ``max_gsnr`` (a parameter's sharding would not fit a scalar).
    """
    scalar = jnp.zeros([], jnp.float32)
    return ScaleBySaIState(
        count=scalar,
        max_gsnr=scalar,
        scale=scalar,
        initialized=scalar,
        momentum_buffer=placeholder if keeps_buffer else None,
    )


def scale_by_sai(
    momentum: Any = DEFAULT_HYPERPARAMETERS["momentum"],
    eps: Any = DEFAULT_HYPERPARAMETERS["eps"],
    *,
    preset: str = DEFAULT_PRESET,
    maximize: Any = DEFAULT_HYPERPARAMETERS["maximize"],
    accumulator_dtype: Any = None,
    **knob_overrides: Any,
) -> optax.GradientTransformationExtraArgs:
    """Scales updates by the SGD-SaI direction ``S * m`` (no learning rate, no weight decay).

    For every leaf with gradient ``g`` (negated first when ``maximize``):

    .. math::

        G &= \\lVert g \\rVert_2 / (\\operatorname{std}(g) + \\epsilon), \\quad
            S = G \\quad (\\text{preset "paper": } S = G / M)
            \\qquad \\text{(at the leaf's first informative gradient; then frozen)} \\\\
        m &\\leftarrow \\mu m + (1 - \\mu) g \\quad (m = g \\text{ at initialization}) \\\\
        u &= S m

    A leaf initializes at its first *informative* gradient: finite, and (``zero_gradient="defer"``,
    the default) not all zero. Until then it is uninitialized: its update is exactly 0 (also for a
    NaN gradient) and its buffer does not change. An unused parameter (``jax.grad`` gives it
    zeros) therefore waits, untouched, until it gets a nonzero gradient. ``M`` (only used with
    ``normalize="max"``) is the largest ``G`` among the leaves initialized at the first update at
    which any leaf initializes; a leaf initialized later uses the same ``M``. Zero-size leaves never
    initialize.

    ``scale_by_sai`` alone cannot stop a later ``optax.add_decayed_weights`` in a hand-built chain
    from decaying uninitialized leaves; :func:`sai_jax.sgd_sai` and :func:`sai_jax.sgd_sai_groups`
    do (their whole update is 0 at such leaves).

    ``preset`` and the knob overrides select the published variants (``sai_core.PRESETS``). Under
    the default ``"sgd-sai"`` (the authors' released algorithm) ``S = G``, about ``sqrt(n)`` for a
    leaf of ``n`` elements; under ``"paper"`` ``S = G / M``, so the same run needs the learning
    rate multiplied by ``M`` and the weight decay divided by ``M`` (see :func:`sai_jax.sgd_sai`).

    Per-leaf hyperparameters (parameter groups): ``momentum``, ``eps`` and ``maximize`` may each
    be a pytree with the parameters' structure (or a prefix of it), or a callable mapping the
    parameters to one; every leaf still shares the one normaliser ``M``. A leaf whose momentum is
    the number ``0`` keeps no buffer. :func:`sai_jax.sgd_sai_groups` builds these trees from
    labels.

    Args:
        momentum: ``mu`` in ``[0, 1)`` (default 0.9); a JAX array (``optax.inject_hyperparams``) is
            accepted unread, and then every leaf keeps a buffer.
        eps: g-SNR denominator guard, ``>= 0`` (default 1e-8).
        preset: a name from ``sai_core.PRESETS`` (default ``"sgd-sai"``).
        maximize: ascend instead of descend (bool, per-leaf tree or callable).
        accumulator_dtype: dtype of the momentum buffers; ``None`` keeps each parameter's dtype
            (a bfloat16 parameter keeps a bfloat16 buffer; statistics and the update itself are
            computed in float32 regardless).
        **knob_overrides: knob values overriding the preset's (``sai_core.KNOB_VALUES``), e.g.
            ``zero_gradient="degenerate"`` (an all-zero first gradient initializes the leaf).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`ScaleBySaIState`.
        Its updates have the gradients' dtypes.

    Raises:
        ValueError: for an invalid hyperparameter, preset or knob value (naming it), and for a
            parameter or gradient that is not real floating point (naming the leaf).
        TypeError: for a keyword that is not a knob.

    Examples:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_sai()
        >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(3), "unused": jnp.ones(4)}
        >>> state = tx.init(params)
        >>> grads = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([1.0, 0.0, -1.0]),
        ...          "unused": jnp.zeros(4)}
        >>> updates, state = tx.update(grads, state)
        >>> [round(float(s), 4) for s in jax.tree.leaves(state.scale)]  # S = G of b, unused, w
        [1.4142, 0.0, 4.2426]
        >>> [bool(f) for f in jax.tree.leaves(state.initialized)]  # the zero gradient waits
        [True, False, True]
        >>> updates["unused"].tolist()
        [0.0, 0.0, 0.0, 0.0]
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
        if _is_tree_map_params_placeholder(params):
            return _placeholder_state(params, _keeps_any_buffer(momentum, []))
        check_real_floating("parameter", params)
        leaves, treedef_ = jax.tree.flatten(params)
        treedef: Any = treedef_  # jax.tree_util.PyTreeDef: its stub is not visible to mypy
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
            initialized=treedef.unflatten([_false() for _ in leaves]),
            momentum_buffer=treedef.unflatten(buffers) if _keeps_any_buffer(momentum, momenta) else None,
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleBySaIState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleBySaIState]:
        del extra_args
        # Step 0: every check below raises before anything is computed (and the caller's state
        # is immutable), so a failed update leaves parameters and state exactly as they were.
        check_real_floating("gradient", updates)
        grads, treedef_ = jax.tree.flatten(updates)
        treedef: Any = treedef_
        try:
            old_scales = treedef.flatten_up_to(state.scale)
            old_initialized = treedef.flatten_up_to(state.initialized)
            old_buffers = (
                [None] * len(grads) if state.momentum_buffer is None else treedef.flatten_up_to(state.momentum_buffer)
            )
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"Invalid gradients: structure {treedef} does not match the state's "
                f"{jax.tree.structure(state.scale)} (the state was initialised with other parameters)"
            ) from error
        _check_matching_gradients(grads, old_buffers, params, treedef)
        momenta = leaf_values("momentum", momentum, updates, treedef)
        epsilons = leaf_values("eps", eps, updates, treedef)
        flags = _maximize_flags(leaf_values("maximize", maximize, updates, treedef))
        grads = [-g if flag else g for g, flag in zip(grads, flags)]
        for index, (mu, buffer) in enumerate(zip(momenta, old_buffers)):
            if _keeps_buffer(mu) != (buffer is not None):
                hint = "call init again"
                if buffer is None and isinstance(mu, jax.Array):
                    # A plain momentum-0 state meets an injected (array) momentum.
                    hint += ', or keep momentum static: optax.inject_hyperparams(sgd_sai, static_args=("momentum",))'
                raise ValueError(
                    f"Invalid momentum: {mu!r} for leaf {index}, whose state "
                    f"{'has no' if buffer is None else 'has a'} momentum buffer; the state was "
                    f"initialised with a different momentum ({hint})"
                )
        epsilons = [jnp.asarray(e, compute_dtype(g, xp=jnp)) for e, g in zip(epsilons, grads)]
        operands = (grads, epsilons, old_scales, old_initialized, state.max_gsnr)
        initialize, keep = _initialization_branches(config)
        candidates = [done for g, done in zip(grads, old_initialized) if g.size > 0]
        if candidates:
            # The initialization branch runs only while some non-empty leaf is uninitialized:
            # once all are, a step executes no statistics at all (under jit as well as eagerly).
            # One reduction over the flags (not a chain of ors): a few dispatches in eager loops.
            pending = ~jnp.all(jnp.stack(candidates))
            scales, initialized, init_now, max_gsnr = jax.lax.cond(pending, initialize, keep, operands)
        else:  # no leaf can ever initialize (no leaves, or only zero-size ones)
            scales, initialized, init_now, max_gsnr = keep(operands)

        new_updates: list[jax.Array] = []
        new_buffers: list[jax.Array | None] = []
        for g, buffer, mu, scale, now, done in zip(grads, old_buffers, momenta, scales, init_now, initialized):
            dtype = compute_dtype(g, xp=jnp)
            mu = jnp.asarray(mu, dtype)
            g_compute = g.astype(dtype)
            if buffer is None:  # momentum statically 0: the direction is the gradient itself
                direction = update_momentum(None, g_compute, momentum=mu, first=True, config=config, xp=jnp)
                new_buffers.append(None)
            else:
                stepped = update_momentum(
                    buffer.astype(dtype), g_compute, momentum=mu, first=now, config=config, xp=jnp
                ).astype(buffer.dtype)
                # An uninitialized leaf keeps its buffer. jnp.where, not a product with the flag:
                # a NaN gradient must not leak into the state (NaN * 0 is NaN).
                new_buffer = jnp.where(done, stepped, buffer)
                new_buffers.append(new_buffer)
                # The update reads the stored (rounded) buffer, as the reference does: XLA then
                # fuses it like SGD's trace instead of recomputing an unrounded copy.
                direction = new_buffer.astype(dtype)
            # Exactly 0 while uninitialized, whatever the gradient holds (selected, not multiplied).
            new_updates.append(jnp.where(done, scale.astype(dtype) * direction, 0).astype(g.dtype))
        new_state = ScaleBySaIState(
            count=optax.safe_increment(state.count),
            max_gsnr=max_gsnr,
            scale=treedef.unflatten(scales),
            initialized=treedef.unflatten(initialized),
            momentum_buffer=None if state.momentum_buffer is None else treedef.unflatten(new_buffers),
        )
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
