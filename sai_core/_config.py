"""Variant knobs, named presets and hyperparameter validation for SGD-SaI.

Every published SGD-SaI port is the paper's algorithm with a few choices made differently. Each
choice is a *knob*; a *preset* names the set of knob values that reproduces one port exactly. The
knobs and presets are defined here once and used by every backend.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "DEFAULT_HYPERPARAMETERS",
    "DEFAULT_PRESET",
    "KNOB_VALUES",
    "PRESETS",
    "SaIConfig",
    "resolve_config",
    "validate_hyperparameters",
]

SnrKind = Literal["gsnr", "sqrt_numel"]
NormalizeKind = Literal["max", "none"]
DegenerateKind = Literal["sqrt_numel", "norm_over_eps", "norm"]
VectorRuleKind = Literal["ratio", "norm"]
MomentumInitKind = Literal["grad", "zeros"]
ZeroGradientKind = Literal["defer", "degenerate"]

# Allowed values of every knob; the first value of each tuple is the default preset's choice.
KNOB_VALUES: Mapping[str, tuple[Any, ...]] = {
    "snr": ("gsnr", "sqrt_numel"),
    "normalize": ("none", "max"),
    "std_correction": (1, 0),
    "degenerate": ("sqrt_numel", "norm_over_eps", "norm"),
    "vector_rule": ("ratio", "norm"),
    "momentum_init": ("grad", "zeros"),
    "zero_gradient": ("defer", "degenerate"),
}

# The preset every optimizer uses unless told otherwise (SPEC v2): the authors' released algorithm
# (no max-normalisation) with the edge cases made safe, so that learning rates and weight decays
# taken from the paper, the published ports and (roughly) AdamW mean what they meant there.
DEFAULT_PRESET = "sgd-sai"

# Default hyperparameters of every backend (SPEC v2). lr 1e-3 under "sgd-sai": a tensor's step is
# about lr * sqrt(n) times its momentum, the authors' units. Under "paper" the same run needs
# lr * M and weight_decay / M (M, the largest first g-SNR, is 256 for a 0.8M-parameter GPT).
DEFAULT_HYPERPARAMETERS: Mapping[str, Any] = {
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 1e-2,
    "eps": 1e-8,
    "maximize": False,
}


@dataclasses.dataclass(frozen=True)
class SaIConfig:
    """The resolved variant knobs of one SGD-SaI optimizer (see ``docs/spec.md``).

    Attributes:
        snr: ``"gsnr"`` computes ``||g|| / (std(g) + eps)``; ``"sqrt_numel"`` uses ``sqrt(n)``.
        normalize: ``"max"`` divides by the largest first-step g-SNR ``M``; ``"none"`` does not.
        std_correction: ``1`` for the unbiased standard deviation, ``0`` for the biased one.
        degenerate: g-SNR of a block with one element or a constant gradient.
        vector_rule: ``"norm"`` gives blocks with ``ndim <= 1`` or ``shape[0] == 1`` the raw norm.
        momentum_init: first momentum buffer ``g`` (``"grad"``) or ``(1 - mu) g`` (``"zeros"``).
        zero_gradient: ``"defer"`` leaves a block whose first gradient is all zero uninitialized
            (and untouched) until a nonzero one; ``"degenerate"`` treats it as a constant gradient.
        preset: the preset these knobs started from (informational).
    """

    snr: SnrKind = "gsnr"
    normalize: NormalizeKind = "none"
    std_correction: int = 1
    degenerate: DegenerateKind = "sqrt_numel"
    vector_rule: VectorRuleKind = "ratio"
    momentum_init: MomentumInitKind = "grad"
    zero_gradient: ZeroGradientKind = "defer"
    preset: str = DEFAULT_PRESET

    def knobs(self) -> dict[str, Any]:
        """Returns the knob values as a plain dict (the preset name excluded)."""
        return {name: getattr(self, name) for name in KNOB_VALUES}


# Named presets: the knobs each one sets away from the default preset's values. Knobs that a preset
# leaves irrelevant (``sqrt_numel`` ignores the statistic's knobs) keep the default so that every
# config is complete.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    # The authors' released algorithm (no max-normalisation), with the edge cases made safe.
    DEFAULT_PRESET: {},
    # Algorithm 1 of arXiv 2412.11768 (max-normalised), with the edge cases made safe.
    "paper": {"normalize": "max"},
    # PyPI sgd-sai 1.0.3 (the authors' release): std().nan_to_num()/(0+eps); a zero first
    # gradient is a constant one (G = 0 / eps = 0: the tensor is frozen).
    "sgd-sai-1.0.3": {"degenerate": "norm_over_eps", "zero_gradient": "degenerate"},
    # The authors' unreleased "normalized" branch.
    "sgd-sai-1.0.4": {"normalize": "max", "degenerate": "norm_over_eps", "zero_gradient": "degenerate"},
    # The authors' nightly branch: the g-SNR is replaced by sqrt(numel), unnormalised.
    "sgd-sai-1.1.0": {"snr": "sqrt_numel", "zero_gradient": "degenerate"},
    # PyPI pytorch-optimizer 4.x, pytorch_optimizer.SGDSaI with its defaults.
    "pytorch-optimizer-4": {
        "degenerate": "norm",
        "vector_rule": "norm",
        "momentum_init": "zeros",
        "zero_gradient": "degenerate",
    },
}


def resolve_config(preset: str = DEFAULT_PRESET, **knob_overrides: Any) -> SaIConfig:
    """Resolves a preset name plus knob overrides into a validated :class:`SaIConfig`.

    Args:
        preset: one of :data:`PRESETS`.
        **knob_overrides: any of the knobs in :data:`KNOB_VALUES`, overriding the preset's value.

    Returns:
        The frozen configuration.

    Raises:
        ValueError: for an unknown preset or a knob value outside its allowed set.
        TypeError: for a keyword that is not a knob.

    Examples:
        >>> resolve_config().preset, resolve_config().normalize
        ('sgd-sai', 'none')
        >>> resolve_config("paper").normalize
        'max'
        >>> resolve_config("paper", std_correction=0).std_correction
        0
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"Invalid preset: {preset!r} (expected one of {sorted(PRESETS)})")
    unknown = sorted(set(knob_overrides) - set(KNOB_VALUES))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; the SGD-SaI knobs are {list(KNOB_VALUES)}")
    values = {**PRESETS[preset], **knob_overrides}
    for name, value in values.items():
        allowed = KNOB_VALUES[name]
        # bool is an int subclass; True/False are not valid std_correction values.
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"Invalid {name}: {value!r} (expected one of {list(allowed)})")
    return SaIConfig(preset=preset, **values)


def _is_real_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Unset:
    """Marks a hyperparameter a caller did not pass to :func:`validate_hyperparameters`."""

    def __repr__(self) -> str:
        return "<not given>"


_UNSET: Any = _Unset()

# Each numeric hyperparameter: its rule as a predicate and as text (the error message).
_RULES: Mapping[str, tuple[Any, str]] = {
    "lr": (lambda v: v >= 0, "lr >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "0 <= momentum < 1"),
    "weight_decay": (lambda v: v >= 0, "weight_decay >= 0"),
    "eps": (lambda v: v >= 0, "eps >= 0"),
}


def validate_hyperparameters(
    *,
    lr: Any = _UNSET,
    momentum: Any = _UNSET,
    weight_decay: Any = _UNSET,
    eps: Any = _UNSET,
    maximize: Any = _UNSET,
    names: Mapping[str, str] | None = None,
) -> None:
    """Raises ``ValueError`` naming the argument and value for any invalid hyperparameter.

    The one validation of every backend. Only the arguments passed are checked; a passed ``None``
    is invalid (it would fail later, at the first step, with an error that names nothing).
    Numbers must be finite Python or NumPy reals; a backend that accepts tensors (a torch ``lr``
    tensor, a traced JAX scalar) checks those itself. ``names`` maps these argument names to the
    ones the backend's user typed (``{"lr": "learning_rate"}``), for the message.

    Examples:
        >>> validate_hyperparameters(lr=0.1, momentum=0.9)
        >>> validate_hyperparameters(momentum=1.0)
        Traceback (most recent call last):
        ...
        ValueError: Invalid momentum: 1.0 (must satisfy 0 <= momentum < 1)
        >>> validate_hyperparameters(eps=None)
        Traceback (most recent call last):
        ...
        ValueError: Invalid eps: None (must be a real number with eps >= 0)
        >>> validate_hyperparameters(lr=-1.0, names={"lr": "learning_rate"})
        Traceback (most recent call last):
        ...
        ValueError: Invalid learning_rate: -1.0 (must satisfy learning_rate >= 0)
    """
    given = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eps": eps}
    names = names or {}
    for key, value in given.items():
        if value is _UNSET:
            continue
        ok, rule = _RULES[key]
        name = names.get(key, key)
        rule = rule.replace(key, name)
        if not _is_real_number(value) and not _is_numpy_real(value):
            raise ValueError(f"Invalid {name}: {value!r} (must be a real number with {rule})")
        if not math.isfinite(float(value)) or not ok(float(value)):
            raise ValueError(f"Invalid {name}: {value!r} (must satisfy {rule})")
    if maximize is not _UNSET and not isinstance(maximize, bool):
        raise ValueError(f"Invalid {names.get('maximize', 'maximize')}: {maximize!r} (must be a bool)")


def _is_numpy_real(value: Any) -> bool:
    # NumPy scalars (np.float32(0.1)) are accepted without importing numpy here.
    dtype = getattr(value, "dtype", None)
    return getattr(value, "shape", None) == () and getattr(dtype, "kind", "") in "fiu" and dtype is not None
