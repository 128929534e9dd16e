"""The user-facing optimizers: ``sgd_sai`` (one group) and ``sgd_sai_groups`` (several).

Both are chains of optax building blocks: :func:`sai_jax.scale_by_sai` (the direction ``S m``),
``optax.add_decayed_weights`` (decoupled weight decay, not scaled by ``S``) and
``optax.scale_by_learning_rate``, so that ``theta <- theta - lr * wd * theta - lr * S * m``. The
chain is wrapped so that a leaf that is not yet initialized (no informative gradient so far) gets
an update of exactly 0: no weight decay either, as SPEC.md requires. The state is the chain's, so
``state[0]`` is the :class:`sai_jax.ScaleBySaIState`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sai_core import DEFAULT_HYPERPARAMETERS, DEFAULT_PRESET

from ._hyperparameters import check_learning_rate, check_maximize, check_numeric, unpack_knob_overrides
from ._transform import ScaleBySaIState, scale_by_sai

__all__ = ["GROUP_KEYS", "sgd_sai", "sgd_sai_groups"]

# Keys a group of sgd_sai_groups may set, and their defaults (sgd_sai's, from sai_core).
GROUP_KEYS: tuple[str, ...] = ("learning_rate", "momentum", "weight_decay", "eps", "maximize")
_GROUP_DEFAULTS: dict[str, Any] = {
    "learning_rate": DEFAULT_HYPERPARAMETERS["lr"],
    "momentum": DEFAULT_HYPERPARAMETERS["momentum"],
    "weight_decay": DEFAULT_HYPERPARAMETERS["weight_decay"],
    "eps": DEFAULT_HYPERPARAMETERS["eps"],
    "maximize": DEFAULT_HYPERPARAMETERS["maximize"],
}


def _check_scalar_or_schedule(name: str, value: Any) -> None:
    if not jax.tree_util.treedef_is_leaf(jax.tree.structure(value)):
        raise ValueError(
            f"Invalid {name}: a pytree {jax.tree.structure(value)} (must be a number, a JAX scalar or a "
            "schedule; for per-leaf values use sgd_sai_groups)"
        )


def _untouched_until_initialized(
    chain: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """``chain`` (whose first state is a ScaleBySaIState), with a final update of exactly 0 at
    every leaf that is still uninitialized after the update: no weight decay, no step.

    The state is ``chain``'s own, unchanged in structure.
    """

    def update_fn(
        updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra_args: Any
    ) -> tuple[optax.Updates, Any]:
        updates, state = chain.update(updates, state, params, **extra_args)
        sai_state: ScaleBySaIState = state[0]
        # -0.0 rather than 0.0: optax.apply_updates adds the update, and p + (-0.0) is p bit for
        # bit for every p, also p = -0.0 (which p + 0.0 would turn into +0.0).
        updates = jax.tree.map(
            lambda u, done: jnp.where(done, u, jnp.asarray(-0.0, u.dtype)), updates, sai_state.initialized
        )
        return updates, state

    return optax.GradientTransformationExtraArgs(chain.init, update_fn)


def sgd_sai(
    learning_rate: optax.ScalarOrSchedule = DEFAULT_HYPERPARAMETERS["lr"],
    momentum: Any = DEFAULT_HYPERPARAMETERS["momentum"],
    weight_decay: optax.ScalarOrSchedule = DEFAULT_HYPERPARAMETERS["weight_decay"],
    eps: Any = DEFAULT_HYPERPARAMETERS["eps"],
    *,
    preset: str = DEFAULT_PRESET,
    maximize: bool = DEFAULT_HYPERPARAMETERS["maximize"],
    mask: Any = None,
    accumulator_dtype: Any = None,
    **knob_overrides: Any,
) -> optax.GradientTransformationExtraArgs:
    """SGD-SaI: SGD with momentum and a per-tensor learning-rate scale fixed at initialization.

    .. math::

        \\theta \\leftarrow \\theta - \\eta \\lambda \\theta - \\eta S m

    with ``S`` and ``m`` from :func:`sai_jax.scale_by_sai`, ``eta`` the learning rate at this
    step and ``lambda`` the weight decay (decoupled: multiplied by ``eta``, not by ``S``).

    The default preset ``"sgd-sai"`` is the authors' released algorithm: ``S = G``, the leaf's
    raw g-SNR, about ``sqrt(n)`` for a leaf of ``n`` elements, so learning rates and weight
    decays from the paper and the published ports (and, roughly, from AdamW) mean what they meant
    there; the default learning rate is ``1e-3``. The max-normalised ``"paper"`` preset
    (``S = G / M``, ``M`` the largest first g-SNR) changes the meaning of both by the factor
    ``M`` (256 for a 0.8M-parameter GPT, about 6,000 for GPT-2 small): the same run needs
    ``learning_rate_paper = learning_rate * M`` and ``weight_decay_paper = weight_decay / M``.
    (Measured: under ``"paper"`` a learning rate of 1e-2 is 3.9e-5 in the authors' units and left
    a digits MLP at 29% accuracy after 30 epochs.) ``M`` is ``state[0].max_gsnr`` after the first
    update, under every preset.

    A leaf initializes at its first informative gradient (finite and not all zero); until then
    its update is exactly 0, weight decay included. An unused parameter, which ``jax.grad`` gives
    zeros, is thus left untouched until it gets a nonzero gradient.

    Every numeric hyperparameter is a plain argument, so ``optax.inject_hyperparams(sgd_sai)``
    works (pass ``static_args=("mask",)`` when ``mask`` is a callable, as for ``optax.adamw``).

    Args:
        learning_rate: ``eta >= 0`` (default ``1e-3``), a JAX scalar or an optax schedule. A
            tensor's step is about ``learning_rate * sqrt(n)`` times its momentum under
            ``"sgd-sai"``; under ``"paper"`` use ``learning_rate * M`` for the same run.
        momentum: ``mu`` in ``[0, 1)`` (default 0.9); ``0`` (a number) keeps no momentum buffer.
        weight_decay: ``lambda >= 0`` (default ``1e-2``), a JAX scalar or a schedule; under
            ``"paper"`` use ``weight_decay / M`` for the same run.
        eps: g-SNR denominator guard, ``>= 0`` (default ``1e-8``).
        preset: a name from ``sai_core.PRESETS`` (default ``"sgd-sai"``).
        maximize: ascend instead of descend.
        mask: optax weight-decay mask: a tree of bools (or a prefix of the params' tree) or a
            callable returning one; ``False`` leaves are not decayed.
        accumulator_dtype: dtype of the momentum buffers (``None``: each parameter's dtype).
        **knob_overrides: knob values overriding the preset's.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is that of the chain
        ``(scale_by_sai, add_decayed_weights, scale_by_learning_rate)``: ``state[0]`` is a
        :class:`sai_jax.ScaleBySaIState`.

    Raises:
        ValueError: for an invalid hyperparameter, preset or knob value (naming it).
        TypeError: for a keyword that is neither an argument nor a knob.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.0, 1.0])}
        >>> loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum((p["b"] - 2.0) ** 2)
        >>> opt = sgd_sai(learning_rate=0.05)
        >>> state = opt.init(params)
        >>> for _ in range(100):
        ...     updates, state = opt.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> float(loss(params)) < 1e-2
        True

        The same run under ``"paper"``: learning rate times ``M``, weight decay divided by ``M``.

        >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.0, 1.0])}
        >>> grads = jax.grad(loss)(params)
        >>> authors = sgd_sai(learning_rate=0.05, weight_decay=0.1)
        >>> u1, s1 = authors.update(grads, authors.init(params), params)
        >>> M = float(s1[0].max_gsnr)
        >>> paper = sgd_sai(learning_rate=0.05 * M, weight_decay=0.1 / M, preset="paper")
        >>> u2, s2 = paper.update(grads, paper.init(params), params)
        >>> all(jnp.allclose(a, b, rtol=1e-6) for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)))
        True
    """
    check_learning_rate(learning_rate)
    check_numeric("weight_decay", weight_decay)
    _check_scalar_or_schedule("weight_decay", weight_decay)
    knob_overrides = unpack_knob_overrides(knob_overrides)
    return _untouched_until_initialized(
        optax.chain(
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
    preset: str = DEFAULT_PRESET,
    accumulator_dtype: Any = None,
    **knob_overrides: Any,
) -> optax.GradientTransformationExtraArgs:
    """SGD-SaI with parameter groups (different hyperparameters) sharing one normaliser ``M``.

    The equivalent of torch's ``param_groups``: every leaf of the parameters carries a label,
    and each label's group sets its own ``learning_rate``, ``momentum``, ``weight_decay``,
    ``eps`` and ``maximize``, each defaulting as in :func:`sgd_sai` (``1e-3``, ``0.9``, ``1e-2``,
    ``1e-8``, ``False``). Under ``preset="paper"`` the g-SNR normaliser ``M`` is the largest over
    *all* leaves, as SPEC.md requires; this is why groups must not be built with
    ``optax.partition`` over separate ``sgd_sai`` instances (each would normalise by its own
    maximum). As in :func:`sgd_sai`, a leaf not yet initialized gets an update of exactly 0.

    Args:
        groups: label -> hyperparameters (keys from :data:`GROUP_KEYS`, all optional).
        param_labels: a pytree of labels with the parameters' structure (or a prefix of it), or a
            callable mapping the parameters to one, as for ``optax.partition``.
        preset: a name from ``sai_core.PRESETS`` (default ``"sgd-sai"``; knobs are
            optimizer-wide).
        accumulator_dtype: dtype of the momentum buffers (``None``: each parameter's dtype).
        **knob_overrides: knob values overriding the preset's.

    Returns:
        An ``optax.GradientTransformationExtraArgs``: ``scale_by_sai`` with per-leaf momentum,
        eps and maximize, then ``optax.partition`` of weight decay and learning rate per group;
        ``state[0]`` is the :class:`sai_jax.ScaleBySaIState`.

    Raises:
        ValueError: for an invalid group (naming its label and the hyperparameter) or a label
            with no group.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
        >>> opt = sgd_sai_groups(
        ...     {"decay": {"learning_rate": 0.01}, "no_decay": {"learning_rate": 0.01, "weight_decay": 0.0}},
        ...     param_labels={"w": "decay", "b": "no_decay"},
        ... )
        >>> state = opt.init(params)
        >>> grads = {"w": jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "b": jnp.array([1.0, -1.0, 0.5])}
        >>> updates, state = opt.update(grads, state, params)
        >>> round(float(state[0].scale["w"]), 4)  # G = ||g|| / std(g) = sqrt(91) / sqrt(3.5)
        5.099
    """
    settings = _group_settings(groups)
    knob_overrides = unpack_knob_overrides(knob_overrides)

    def per_leaf(key: str):
        def values(tree: Any) -> Any:  # also carries .choices (below)
            labels = param_labels(tree) if callable(param_labels) else param_labels

            def lookup(label: Hashable) -> Any:
                if label not in settings:
                    raise ValueError(f"Invalid param_labels: label {label!r} has no group (groups: {list(settings)})")
                return settings[label][key]

            return jax.tree.map(lookup, labels)

        # The values this can return (scale_by_sai reads them when it cannot call it: the state
        # optax.tree_map_params builds from a placeholder keeps a momentum buffer iff a leaf may).
        used = (
            settings
            if callable(param_labels)
            else {label: settings[label] for label in jax.tree.leaves(param_labels) if label in settings}
        )
        values.choices = tuple(group[key] for group in used.values())  # type: ignore[attr-defined]
        return values

    inner = {
        label: optax.chain(
            optax.add_decayed_weights(group["weight_decay"]),
            optax.scale_by_learning_rate(group["learning_rate"]),
        )
        for label, group in settings.items()
    }
    return _untouched_until_initialized(
        optax.chain(
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
    )
