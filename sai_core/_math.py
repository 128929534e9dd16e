"""The g-SNR and SaI update math, written once against the array API standard.

Every function takes the array namespace as a keyword ``xp``; ``None`` resolves it from the arrays
with ``array_api_compat``. A namespace that is not array-API compatible (a ``keras.ops`` shim) can be
passed explicitly; it must provide the names in :data:`NAMESPACE_CONTRACT`.

The functions are branch-free on array *values*: Python ``if`` statements depend only on static
things (shapes, knob values, Python bools), so they run traced under ``jax.jit`` and in TF graphs.
Statistics are computed in float64 for float64 inputs and in float32 otherwise (bf16/fp16 too),
on the gradient scaled by a power of two when its magnitude would make the squares overflow or
underflow (see :func:`raw_gsnr`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from array_api_compat import array_namespace

from ._config import DEFAULT_PRESET, SaIConfig, resolve_config

__all__ = [
    "NAMESPACE_CONTRACT",
    "NonFiniteGradientWarning",
    "compute_dtype",
    "gsnr",
    "is_informative",
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
    "all",
    "asarray",
    "astype",
    "float32",
    "float64",
    "isdtype",
    "isfinite",
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


@dataclasses.dataclass(frozen=True)
class _Range:
    """Binary exponents of a statistic dtype (float32 or float64), for the overflow-safe statistic."""

    max_exponent: int  # every finite value is below 2**max_exponent
    min_normal_exponent: int  # 2**min_normal_exponent is the smallest normal number
    precision: int  # significand bits, the implicit one included
    steps: tuple[int, ...]  # halving exponents of the power-of-two search (they sum to <= -min_normal)


_RANGES = {
    "float32": _Range(128, -126, 24, (64, 32, 16, 8, 4, 2)),
    "float64": _Range(1024, -1022, 53, (512, 256, 128, 64, 32, 16, 8, 4, 2)),
}


def _safe_exponents(n: int, is_float64: bool) -> tuple[int, int]:
    """``(low, high)``: the statistic is computed unscaled when ``2**low <= max|g| <= 2**high``.

    high: every centred element is at most ``2 max|g|``, so a sum of ``n`` squares stays below
    ``2**(2 high + 2 + ceil(log2 n))``, which must stay below the dtype's largest finite number.
    low: an element ``2**-precision`` times ``max|g|`` (the smallest that can still change a sum
    of squares) must have a normal square, so that underflow never loses a significant term.
    """
    r = _RANGES["float64" if is_float64 else "float32"]
    high = (r.max_exponent - 3 - max(0, math.ceil(math.log2(max(n, 1))))) // 2
    low = -((-r.min_normal_exponent - 2 * r.precision) // 2)
    return low, high


def _power_of_two_factor(max_abs: Array, one: Array, is_float64: bool, xp: Namespace) -> tuple[Array, Array]:
    """``(2**-k, 2**k)`` with ``2**k`` a power of two near ``max_abs`` (0-d arrays, ``one``'s dtype).

    A branch-free binary search on the exponent using only comparisons and multiplications by
    powers of two, so every value involved is exact and nothing overflows. ``max_abs * 2**-k``
    lands in ``[1/4, 4)`` (higher for a subnormal ``max_abs``, whose search stops at the largest
    normal factor), and both factors stay normal numbers: a flush-to-zero device cannot turn them
    into 0.
    """
    r = _RANGES["float64" if is_float64 else "float32"]
    m, factor, inverse = max_abs, one, one
    for b in r.steps:
        big = m >= 2.0**b
        small = m < 2.0**-b
        step = xp.where(big, one * 2.0**-b, xp.where(small, one * 2.0**b, one))
        m = m * step
        factor = factor * step
        inverse = inverse * xp.where(big, one * 2.0**b, xp.where(small, one * 2.0**-b, one))
    return factor, inverse


class NonFiniteGradientWarning(RuntimeWarning):
    """A block's first gradient had a NaN or inf element: the block stays uninitialized.

    Issued once per block by the eager implementations (the reference, ``sai_torch``). The block
    is left untouched, as if it had no gradient, and initializes at its first finite one.
    """

    @classmethod
    def message(cls, block: str) -> str:
        """The warning's text for ``block`` (how the implementation names it: index, shape, name)."""
        return (
            f"SGD-SaI: the first gradient of {block} has a non-finite element; the tensor stays "
            "uninitialized and untouched until its first finite gradient (other tensors and M are "
            "unaffected)"
        )


def is_informative(grad: Array, *, config: SaIConfig, xp: Namespace | None = None) -> Array:
    """Whether a block's first gradient may initialize it (SPEC step 2), as a 0-d bool array.

    A gradient is informative when every element is finite and, under ``zero_gradient="defer"``,
    not every element is zero. An uninformative first gradient leaves the block uninitialized and
    untouched, exactly as if it had no gradient. A zero-size block is never informative (it is
    never initialized and never changes).

    Examples:
        >>> import numpy as np
        >>> from sai_core import resolve_config
        >>> config = resolve_config()
        >>> [bool(is_informative(np.array(g), config=config)) for g in ([1.0, 0.0], [0.0, 0.0], [1.0, np.nan])]
        [True, False, False]
        >>> bool(is_informative(np.zeros(2), config=resolve_config("sgd-sai-1.0.3")))  # zero is constant there
        True
    """
    xp = _namespace(xp, grad)
    if _numel(tuple(grad.shape)) == 0:
        return xp.asarray(False)
    finite = xp.all(xp.isfinite(grad))
    if config.zero_gradient == "degenerate":
        return finite
    return finite & ((xp.max(grad) != 0) | (xp.min(grad) != 0))


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

    No overflow or underflow for any finite gradient: when ``max|g|`` lies outside the range in
    which the squares are safe (:func:`_safe_exponents`), the statistics are computed on
    ``g * 2**-k`` with ``eps * 2**-k``, ``2**k`` a power of two near ``max|g|``. Scaling by a
    power of two is exact, and a gradient inside the safe range is multiplied by exactly 1, so
    ordinary gradients give the unscaled formula's value bit for bit. Call it on informative
    gradients (:func:`is_informative`); for others the value is meaningless but raises nothing.

    Args:
        grad: the block's gradient (any shape, any real floating dtype).
        eps: the denominator guard (Python float or 0-d array).
        config: resolved knobs.
        xp: array namespace override.

    Returns:
        0-d array, float64 for float64 gradients and float32 otherwise.

    Examples:
        >>> import numpy as np
        >>> from sai_core import resolve_config
        >>> config = resolve_config()
        >>> g = np.array([1.0, 2.0, 3.0], dtype=np.float32)
        >>> round(float(raw_gsnr(g, eps=0.0, config=config)), 5)  # sqrt(14) / 1
        3.74166
        >>> huge = g * np.float32(2.0**100)  # its squares (~1e61) overflow float32
        >>> float(raw_gsnr(huge, eps=0.0, config=config)) == float(raw_gsnr(g, eps=0.0, config=config))
        True
    """
    xp = _namespace(xp, grad)
    dtype = compute_dtype(grad, xp=xp)
    is_float64 = xp.isdtype(dtype, xp.float64)
    shape = tuple(grad.shape)
    n = _numel(shape)
    if config.snr == "sqrt_numel":
        return xp.asarray(math.sqrt(n), dtype=dtype)
    g = xp.astype(grad, dtype)
    largest, smallest = xp.max(g), xp.min(g)
    max_abs = xp.where(largest >= -smallest, largest, -smallest)
    low, high = _safe_exponents(n, is_float64)
    in_range = (max_abs >= 2.0**low) & (max_abs <= 2.0**high)
    one = xp.asarray(1.0, dtype=dtype)
    factor, inverse = _power_of_two_factor(max_abs, one, is_float64, xp)
    factor = xp.where(in_range, one, factor)
    inverse = xp.where(in_range, one, inverse)
    g = g * factor
    scaled_norm = xp.sqrt(xp.sum(g * g))
    if config.vector_rule == "norm" and (len(shape) <= 1 or shape[0] == 1):
        return scaled_norm * inverse  # exact (a power of two); inf only where ||g|| exceeds the dtype
    if config.degenerate == "sqrt_numel":
        degenerate = xp.asarray(math.sqrt(n), dtype=dtype)
    elif config.degenerate == "norm":
        degenerate = scaled_norm * inverse
    else:  # "norm_over_eps": what std().nan_to_num() followed by / (0 + eps) produces.
        degenerate = scaled_norm * inverse / eps
    if n <= 1:
        return degenerate
    mean = xp.sum(g) / n
    centred = g - mean
    std = xp.sqrt(xp.sum(centred * centred) / (n - config.std_correction))
    constant = largest == smallest
    denominator = std + eps * factor
    # The ratio branch never divides by zero: where the denominator is 0 the degenerate value
    # is selected anyway (s == 0 and eps == 0 only happens for constant gradients).
    safe_denominator = xp.where(denominator == 0, one, denominator)
    return xp.where(constant, degenerate, scaled_norm / safe_denominator)


def gsnr(
    grad: Array,
    *,
    eps: float = 1e-8,
    preset: str = DEFAULT_PRESET,
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
        >>> float(gsnr(np.full((2, 2), 0.5)))  # a constant gradient gets sqrt(n), never 0
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
    if max_gsnr is None:
        raise ValueError(f"scale_from_gsnr: max_gsnr=None with normalize={config.normalize!r} (needs M)")
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

        \\theta \\leftarrow (1 - \\eta \\lambda) \\theta - (\\eta S) m

    (decoupled decay from the step's ``lr``, unscaled by ``S``; the same as decaying first and
    then stepping, with one rounding fewer.)
    """
    xp = _namespace(xp, param)
    dtype = compute_dtype(param, xp=xp)
    # Written as decay * theta - step * m, one rounding per product and one for the difference:
    # the form that every fast path (foreach passes, the fused kernel) can reproduce exactly.
    # An array lr (a float64 tensor, a traced value) forms both factors in its own dtype; they are
    # cast to the compute dtype so that they never promote a 0-d parameter's update out of it.
    decay = 1 - lr * weight_decay
    if not isinstance(decay, (int, float)):
        decay = xp.astype(decay, dtype)
    step = xp.astype(lr * xp.astype(scale, dtype), dtype)
    theta = decay * xp.astype(param, dtype) - step * xp.astype(direction, dtype)
    return xp.astype(theta, param.dtype)
