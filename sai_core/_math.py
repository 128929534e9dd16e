"""The g-SNR and SaI update math, written once against the array API standard.

Every function takes the array namespace as a keyword ``xp``; ``None`` resolves it from the arrays
with ``array_api_compat``. A namespace that is not array-API compatible (a ``keras.ops`` shim) can be
passed explicitly; it must provide the names in :data:`NAMESPACE_CONTRACT`.

The functions are branch-free on array *values*: Python ``if`` statements depend only on static
things (shapes, knob values, Python bools), so they run traced under ``jax.jit`` and in TF graphs.
Statistics are computed in float64 for float64 inputs and in float32 otherwise (bf16/fp16 too).
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from ._config import SaIConfig, resolve_config

__all__ = [
    "NAMESPACE_CONTRACT",
    "compute_dtype",
    "gsnr",
    "raw_gsnr",
    "scale_from_gsnr",
    "update_momentum",
    "update_param",
]

Array = Any
Namespace = Any

# Every attribute of ``xp`` used by this module (a shim for a non-array-API library implements
# these, with array-API semantics). A test runs the core through a recording namespace to keep
# this list exact.
NAMESPACE_CONTRACT: tuple[str, ...] = (
    "asarray",
    "astype",
    "float32",
    "float64",
    "isdtype",
    "max",
    "min",
    "sqrt",
    "sum",
    "where",
)


def _namespace(xp: Namespace | None, *arrays: Array) -> Namespace:
    return array_namespace(*arrays) if xp is None else xp


def compute_dtype(x: Array, *, xp: Namespace | None = None) -> Any:
    """The dtype statistics and updates of ``x`` are computed in: float64 stays, all else float32.

    Examples:
        >>> import numpy as np
        >>> compute_dtype(np.zeros(3, dtype=np.float16)) == np.float32
        True
    """
    xp = _namespace(xp, x)
    return xp.float64 if xp.isdtype(x.dtype, xp.float64) else xp.float32


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(int(d) for d in shape)


def _select(xp: Namespace, condition: Any, if_true: Array, if_false: Array) -> Array:
    # A Python bool is static (the eager reference knows which blocks are new); an array
    # condition is data (traced first-step flags in JAX / Keras graphs).
    if isinstance(condition, bool):
        return if_true if condition else if_false
    return xp.where(condition, if_true, if_false)


def raw_gsnr(grad: Array, *, eps: Any, config: SaIConfig, xp: Namespace | None = None) -> Array:
    """Raw g-SNR ``G`` of one block's gradient, as a 0-d array in :func:`compute_dtype`.

    .. math::

        G = \\frac{\\lVert g \\rVert_2}{s + \\epsilon}, \\qquad
        s = \\sqrt{\\tfrac{1}{n - c} \\textstyle\\sum_i (g_i - \\bar g)^2}

    with ``c = config.std_correction``. Degenerate blocks (``n == 1`` or a constant gradient, for
    which ``s`` is exactly 0) get the ``config.degenerate`` value; ``config.vector_rule`` and
    ``config.snr`` select the variants of :mod:`sai_core._config`. A gradient counts as constant
    when its largest and smallest elements are equal, so rounding in the mean cannot turn an exact
    zero deviation into a tiny ``s`` and an exploding ratio.

    Args:
        grad: the block's gradient (any shape, any real floating dtype).
        eps: the denominator guard (Python float or 0-d array).
        config: resolved knobs.
        xp: array namespace override.

    Returns:
        0-d array, float64 for float64 gradients and float32 otherwise.
    """
    xp = _namespace(xp, grad)
    dtype = compute_dtype(grad, xp=xp)
    shape = tuple(grad.shape)
    n = _numel(shape)
    if config.snr == "sqrt_numel":
        return xp.asarray(math.sqrt(n), dtype=dtype)
    g = xp.astype(grad, dtype)
    norm = xp.sqrt(xp.sum(g * g))
    if config.vector_rule == "norm" and (len(shape) <= 1 or shape[0] == 1):
        return norm
    if config.degenerate == "sqrt_numel":
        degenerate = xp.asarray(math.sqrt(n), dtype=dtype)
    elif config.degenerate == "norm":
        degenerate = norm
    else:  # "norm_over_eps": what std().nan_to_num() followed by / (0 + eps) produces.
        degenerate = norm / eps
    if n <= 1:
        return degenerate
    mean = xp.sum(g) / n
    centred = g - mean
    std = xp.sqrt(xp.sum(centred * centred) / (n - config.std_correction))
    constant = xp.max(g) == xp.min(g)
    denominator = std + eps
    # The ratio branch never divides by zero: where the denominator is 0 the degenerate value
    # is selected anyway (s == 0 and eps == 0 only happens for constant gradients).
    safe_denominator = xp.where(denominator == 0, xp.asarray(1.0, dtype=dtype), denominator)
    return xp.where(constant, degenerate, norm / safe_denominator)


def gsnr(
    grad: Array,
    *,
    eps: float = 1e-8,
    preset: str = "paper",
    xp: Namespace | None = None,
    **knob_overrides: Any,
) -> Array:
    """Raw g-SNR of a gradient under a preset (the statistic before max-normalisation).

    Args:
        grad: one block's gradient.
        eps: the denominator guard.
        preset: a name from :data:`sai_core.PRESETS`.
        xp: array namespace override (resolved from ``grad`` when ``None``).
        **knob_overrides: knob values overriding the preset's.

    Returns:
        0-d array (float64 for float64 input, float32 otherwise).

    Examples:
        >>> import numpy as np
        >>> round(float(gsnr(np.array([1.0, 2.0, 3.0]))), 6)  # ||g|| / (std + eps) = sqrt(14) / 1
        3.741657
        >>> float(gsnr(np.zeros((2, 2))))  # a zero gradient gets sqrt(n), never 0
        2.0
    """
    config = resolve_config(preset, **knob_overrides)
    return raw_gsnr(grad, eps=eps, config=config, xp=xp)


def scale_from_gsnr(
    gsnr_value: Array, max_gsnr: Array | None, *, config: SaIConfig, xp: Namespace | None = None
) -> Array:
    """The block's learning-rate scale ``S``: ``G / M`` (``normalize="max"``) or ``G``.

    ``M == 0`` can only happen under presets whose degenerate value is 0 for a zero gradient; the
    scale is then 0 (the block stays frozen, as in those ports) rather than ``nan``.
    """
    if config.normalize == "none":
        return gsnr_value
    xp = _namespace(xp, gsnr_value, max_gsnr)
    positive = max_gsnr > 0
    one = xp.asarray(1.0, dtype=compute_dtype(gsnr_value, xp=xp))
    ratio = gsnr_value / xp.where(positive, max_gsnr, one)
    return xp.where(positive, ratio, xp.asarray(0.0, dtype=compute_dtype(gsnr_value, xp=xp)))


def update_momentum(
    buffer: Array | None,
    grad: Array,
    *,
    momentum: Any,
    first: Any,
    config: SaIConfig,
    xp: Namespace | None = None,
) -> Array:
    """The new momentum buffer (also the update direction) from the gradient.

    First gradient (``first`` true): ``m = g`` (``momentum_init="grad"``) or ``(1 - mu) g``
    (``"zeros"``). Later: ``m = mu m + (1 - mu) g``. ``first`` may be a Python bool (``buffer``
    may then be ``None``) or a boolean 0-d array (``buffer`` must then be an array).
    The result has ``grad``'s dtype.
    """
    xp = _namespace(xp, grad)
    initial = grad if config.momentum_init == "grad" else (1 - momentum) * grad
    if buffer is None:
        if first is not True:
            raise ValueError("update_momentum: buffer=None requires first=True")
        return initial
    return _select(xp, first, initial, momentum * buffer + (1 - momentum) * grad)


def update_param(
    param: Array,
    direction: Array,
    scale: Array,
    *,
    lr: Any,
    weight_decay: Any,
    xp: Namespace | None = None,
) -> Array:
    """One SaI parameter update, computed in :func:`compute_dtype` and cast back.

    .. math::

        \\theta \\leftarrow \\theta - \\eta \\lambda \\theta, \\qquad
        \\theta \\leftarrow \\theta - \\eta S m
    """
    xp = _namespace(xp, param)
    dtype = compute_dtype(param, xp=xp)
    theta = xp.astype(param, dtype)
    theta = theta - lr * weight_decay * theta
    theta = theta - (lr * xp.astype(scale, dtype)) * xp.astype(direction, dtype)
    return xp.astype(theta, param.dtype)
