"""Planted optax ports: :func:`planted_sai` is clean (preset ``sgd-sai``); each factory below plants
one mistake. Written eagerly with NumPy inside (Python control flow on concrete values), as a first
port often is, and fast enough to identify several in a test: ``identify`` drives ``update``
eagerly. bfloat16 arrays arrive as ``ml_dtypes.bfloat16`` NumPy arrays."""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import optax


class PlantedState(NamedTuple):
    """Per leaf: ``initialized`` (0-d bool), ``scale`` (0-d float64/float32), ``buffer`` (leaf-shaped)."""

    initialized: list[Any]
    scale: list[Any]
    buffer: list[Any]
    divisor: Any  # 0-d: the mean first g-SNR (mean_normalise), else 1


def _planted(
    learning_rate: float, momentum: float, weight_decay: float, eps: float, maximize: bool, mistakes: frozenset[str]
) -> optax.GradientTransformation:
    calls = {"update": 0}

    def statistic(grad: np.ndarray) -> float:
        n = grad.size
        if n == 1 or grad.max() == grad.min():
            return math.sqrt(n)
        work = grad.astype(np.float64)
        ddof = 0 if "biased_std" in mistakes else 1
        norm, std = np.sqrt(np.sum(work * work)), np.std(work, ddof=ddof)
        if "bf16_stats" in mistakes:  # each reduction's result stored in the gradient's dtype
            norm, std = norm.astype(grad.dtype), std.astype(grad.dtype)
            return float((norm / (std + np.asarray(eps).astype(grad.dtype))).astype(grad.dtype))
        return float(norm / (std + eps))

    def init(params: Any) -> PlantedState:
        leaves = list(params)
        wide = [jnp.promote_types(p.dtype, jnp.float32) for p in leaves]
        return PlantedState(
            [jnp.asarray(False) for _ in leaves],
            [jnp.zeros((), w) for w in wide],
            [jnp.zeros_like(p) for p in leaves],
            jnp.ones((), jnp.float32),
        )

    def update(grads: Any, state: PlantedState, params: Any = None) -> tuple[Any, PlantedState]:
        calls["update"] += 1
        if "hang" in mistakes and calls["update"] >= 2:
            while True:  # waits for something that never comes
                time.sleep(0.05)
        grads = [np.asarray(-g if maximize else g) for g in grads]
        params = [np.asarray(p) for p in params]
        initialized, scale, buffer = list(state.initialized), list(state.scale), list(state.buffer)
        divisor = state.divisor
        new = []
        for i, g in enumerate(grads):
            if bool(initialized[i]):
                continue
            finite = bool(np.all(np.isfinite(g.astype(np.float64)))) or "nonfinite_poisons" in mistakes
            nonzero = bool(np.any(g.astype(np.float64) != 0)) or "zero_sqrt_n" in mistakes
            if g.size and finite and nonzero:
                new.append((i, statistic(g)))
        if new and "mean_normalise" in mistakes and not any(bool(f) for f in initialized):
            divisor = jnp.asarray(sum(v for _, v in new) / len(new), jnp.float32)
        for i, value in new:
            initialized[i] = jnp.asarray(True)
            scale[i] = jnp.asarray(value / float(divisor), scale[i].dtype)
        updates = []
        for i, (g, p) in enumerate(zip(grads, params)):
            if not bool(initialized[i]):
                updates.append(jnp.zeros_like(p))
                continue
            wide = np.float64 if p.dtype == np.float64 else np.float32
            first = any(i == j for j, _ in new)
            old = np.asarray(buffer[i]).astype(wide)
            m = g.astype(wide) if first or momentum == 0 else momentum * old + (1 - momentum) * g.astype(wide)
            buffer[i] = jnp.asarray(m.astype(p.dtype))
            s = float(scale[i])
            theta = p.astype(wide)
            decay = learning_rate * weight_decay * (s if "decay_times_s" in mistakes else 1.0)
            if "decay_after" in mistakes:
                new_theta = (theta - learning_rate * s * m) * (1 - decay)
            else:
                new_theta = theta * (1 - decay) - learning_rate * s * m
            # The update that lands exactly on the new value once apply_updates adds it.
            updates.append(jnp.asarray(new_theta.astype(p.dtype)) - jnp.asarray(p))
        return updates, PlantedState(initialized, scale, buffer, divisor)

    return optax.GradientTransformation(init, update)


def planted_sai(learning_rate=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, maximize=False):
    """Clean SGD-SaI (preset sgd-sai) as an optax transformation."""
    return _planted(learning_rate, momentum, weight_decay, eps, maximize, frozenset())


def decay_after_update(learning_rate=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, maximize=False):
    """Planted: decoupled weight decay applied after the update."""
    return _planted(learning_rate, momentum, weight_decay, eps, maximize, frozenset({"decay_after"}))


def decay_times_scale(learning_rate=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, maximize=False):
    """Planted: weight decay multiplied by the block's scale S."""
    return _planted(learning_rate, momentum, weight_decay, eps, maximize, frozenset({"decay_times_s"}))


def mean_normalised_biased_std(learning_rate=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, maximize=False):
    """Planted: S = G / mean of the first g-SNRs, with the biased std."""
    return _planted(learning_rate, momentum, weight_decay, eps, maximize, frozenset({"mean_normalise", "biased_std"}))


def zero_grad_sqrt_n(learning_rate=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, maximize=False):
    """Planted: an all-zero first gradient initializes the leaf with G = sqrt(n)."""
    return _planted(learning_rate, momentum, weight_decay, eps, maximize, frozenset({"zero_sqrt_n"}))


def nonfinite_poisons(learning_rate=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, maximize=False):
    """Planted: a non-finite first gradient initializes the leaf (G = nan)."""
    return _planted(learning_rate, momentum, weight_decay, eps, maximize, frozenset({"nonfinite_poisons"}))


def bf16_statistics(learning_rate=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, maximize=False):
    """Planted: the statistic computed in the gradient's dtype."""
    return _planted(learning_rate, momentum, weight_decay, eps, maximize, frozenset({"bf16_stats"}))


def hangs_at_step_2(learning_rate=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, maximize=False):
    """Planted: update() never returns from its second call on."""
    return _planted(learning_rate, momentum, weight_decay, eps, maximize, frozenset({"hang"}))
