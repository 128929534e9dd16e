"""What the g-SNR does to each tensor, as rows: the one report every adapter builds and ``sai-gsnr`` renders.

A report is either the g-SNR of one gradient (what an optimizer built now would freeze at its first
step) or the frozen scales an optimizer holds. The adapters (``sai_torch.gsnr_report``,
``sai_jax.gsnr_report``, ``sai_keras.gsnr_report`` and their ``scale_report``) only collect names,
shapes and gradients or stored scales from their framework; the numbers come from here, through
:func:`sai_core.raw_gsnr`, :func:`sai_core.is_informative` and :func:`sai_core.scale_from_gsnr`,
the functions every optimizer uses. Eager by design (it reads values with ``float``): this is an
inspector, never part of a training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import array_api_compat.numpy as host_xp
import numpy as np
from array_api_compat import array_namespace

from ._config import SaIConfig
from ._math import compute_dtype, is_informative, raw_gsnr, scale_from_gsnr

__all__ = ["GsnrReport", "GsnrRow", "report_from_gradients", "report_from_scales"]

Array = Any


class GsnrRow(NamedTuple):
    """One tensor of a :class:`GsnrReport`.

    Attributes:
        name: the tensor's name in its framework (``named_parameters``, a pytree path, a
            Keras variable path), or ``"parameter {index}"`` where none was recorded.
        shape: its shape; ``None`` where a checkpoint does not record it (no momentum buffer).
        gsnr: ``G``, the raw g-SNR; ``None`` when the tensor has no scale (see ``note``).
        scale: ``S``, the learning-rate multiplier (``G`` under ``sgd-sai``, ``G / M`` under
            ``paper``); ``None`` with ``gsnr``.
        note: why ``gsnr`` is ``None`` (``"no gradient"``, ``"all-zero gradient: waits"``, ...);
            empty otherwise.
    """

    name: str
    shape: tuple[int, ...] | None
    gsnr: float | None
    scale: float | None
    note: str = ""

    @property
    def numel(self) -> int | None:
        """``n``, the number of elements (``None`` when the shape is unknown)."""
        return None if self.shape is None else math.prod(self.shape)

    @property
    def sqrt_numel(self) -> float | None:
        """``sqrt(n)``: what ``G`` is close to for any zero-mean gradient."""
        return None if self.shape is None else math.sqrt(math.prod(self.shape))

    @property
    def ratio(self) -> float | None:
        """``G / sqrt(n - 1)``: never below 1 (up to ``eps``), since ``||g||^2 = (n-1) s^2 + n mean^2``.

        ``None`` for ``n <= 1`` or an unknown ``G`` or shape.
        """
        n = self.numel
        if self.gsnr is None or n is None or n <= 1:
            return None
        return self.gsnr / math.sqrt(n - 1)


class GsnrReport(NamedTuple):
    """Per-tensor g-SNRs and scales of one model, plus ``M``.

    Attributes:
        rows: one :class:`GsnrRow` per tensor, in registration order.
        max_gsnr: ``M``, the largest ``G`` of the tensors initialized first (``None`` if none is).
        config: the knobs the scales follow (``config.preset`` names them).
        source: ``"gradient"`` (computed from one gradient now) or ``"checkpoint"`` (frozen
            scales read from an optimizer or its saved state).
        framework: ``"torch"``, ``"jax"``, ``"keras"`` or ``"numpy"``.
    """

    rows: tuple[GsnrRow, ...]
    max_gsnr: float | None
    config: SaIConfig
    source: str
    framework: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, plus ``n``, ``sqrt_n`` and ``G / sqrt(n - 1)`` per row."""
        return {
            "framework": self.framework,
            "source": self.source,
            "preset": self.config.preset,
            "knobs": self.config.knobs(),
            "max_gsnr": self.max_gsnr,
            "rows": [
                {
                    "name": row.name,
                    "shape": None if row.shape is None else list(row.shape),
                    "n": row.numel,
                    "gsnr": row.gsnr,
                    "sqrt_n": row.sqrt_numel,
                    "gsnr_over_sqrt_n_minus_1": row.ratio,
                    "scale": row.scale,
                    "note": row.note,
                }
                for row in self.rows
            ],
        }


def report_from_gradients(
    names: Sequence[str],
    grads: Sequence[Array | None],
    *,
    eps: float,
    config: SaIConfig,
    framework: str,
    xp: Any = None,
) -> GsnrReport:
    """The scales an SGD-SaI optimizer would freeze if ``grads`` were its first gradient.

    ``G`` is :func:`sai_core.raw_gsnr` of each informative gradient (computed in the gradient's
    own namespace, in the dtype the optimizers use); a single gradient is the first step, so ``M``
    is the largest of those ``G`` and ``S`` is :func:`sai_core.scale_from_gsnr`. A gradient that is
    ``None``, zero-size or not informative gets no scale and a note saying why.

    Args:
        names: one name per tensor.
        grads: one gradient per tensor (``None``: no gradient), any array-API array.
        eps: the g-SNR denominator guard.
        config: the knobs (``sai_core.resolve_config(preset)``).
        framework: recorded in the report.
        xp: array namespace override (a shim for Keras tensors); ``None`` resolves per gradient.

    Returns:
        A :class:`GsnrReport` with ``source="gradient"``.

    Examples:
        >>> import numpy as np
        >>> from sai_core import resolve_config
        >>> report = report_from_gradients(
        ...     ["w", "b", "unused"], [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 0.0, -1.0]), np.zeros(3)],
        ...     eps=1e-8, config=resolve_config(), framework="numpy")
        >>> [(r.name, round(r.gsnr, 4), round(r.scale, 4)) for r in report.rows[:2]]  # S = G under sgd-sai
        [('w', 4.2426, 4.2426), ('b', 1.4142, 1.4142)]
        >>> report.rows[2].note, round(report.max_gsnr, 4)
        ('all-zero gradient: waits', 4.2426)
        >>> round(report_from_gradients(["w", "b"], [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 0.0, -1.0])],
        ...     eps=1e-8, config=resolve_config("paper"), framework="numpy").rows[1].scale, 4)  # G / M
        0.3333
    """
    if len(names) != len(grads):
        raise ValueError(f"Invalid grads: {len(grads)} gradients for {len(names)} names")
    computed: list[tuple[float, type] | None] = []  # (G, host dtype of the statistic) per tensor
    notes: list[str] = []
    for grad in grads:
        computed.append(None)
        if grad is None:
            notes.append("no gradient")
            continue
        if math.prod(int(d) for d in grad.shape) == 0:
            notes.append("zero-size: never initialized")
            continue
        space = array_namespace(grad) if xp is None else xp
        if not bool(is_informative(grad, config=config, xp=space)):
            finite = bool(space.all(space.isfinite(grad)))
            notes.append("all-zero gradient: waits" if finite else "non-finite gradient: waits")
            continue
        is_float64 = space.isdtype(compute_dtype(grad, xp=space), space.float64)
        computed[-1] = (
            float(raw_gsnr(grad, eps=eps, config=config, xp=space)),
            np.float64 if is_float64 else np.float32,
        )
        notes.append("")
    # One gradient is the first step: every informative tensor initializes now, so M is the
    # largest of their G (Python's max keeps the first of equal values, as the optimizers do).
    informative = [c[0] for c in computed if c is not None]
    max_gsnr = max(informative) if informative else None
    rows = []
    for name, grad, value, note in zip(names, grads, computed, notes):
        shape = None if grad is None else tuple(int(d) for d in grad.shape)
        if value is None:
            rows.append(GsnrRow(name, shape, None, None, note))
            continue
        gsnr, dtype = value
        # On the host in the statistic's dtype, as sai_torch divides: S rounds as the optimizer's.
        scale = scale_from_gsnr(dtype(gsnr), dtype(max_gsnr), config=config, xp=host_xp)
        rows.append(GsnrRow(name, shape, gsnr, float(scale)))
    return GsnrReport(tuple(rows), max_gsnr, config, "gradient", framework)


def report_from_scales(
    entries: Sequence[tuple[str, tuple[int, ...] | None, float | None]],
    max_gsnr: float | None,
    *,
    config: SaIConfig,
    framework: str,
) -> GsnrReport:
    """The frozen scales an optimizer holds, with the ``G`` they came from.

    ``G`` is recovered from ``S``: ``S * M`` under ``normalize="max"``, ``S`` otherwise.

    Args:
        entries: ``(name, shape or None, S or None)`` per tensor; ``None``: not initialized yet.
        max_gsnr: the stored ``M`` (``None`` while no tensor is initialized).
        config: the knobs the optimizer was built with.
        framework: recorded in the report.

    Returns:
        A :class:`GsnrReport` with ``source="checkpoint"``.

    Examples:
        >>> from sai_core import resolve_config
        >>> report = report_from_scales([("w", (2, 2), 1.0), ("b", (3,), 0.3333)], 4.2426,
        ...                             config=resolve_config("paper"), framework="torch")
        >>> [round(r.gsnr, 4) for r in report.rows]  # G = S * M under "paper"
        [4.2426, 1.4141]
    """
    rows = []
    for name, shape, scale in entries:
        if scale is None:
            rows.append(GsnrRow(name, shape, None, None, "not initialized yet"))
            continue
        scale = float(scale)
        if config.normalize == "max":
            gsnr = scale * float(max_gsnr) if max_gsnr is not None else None
        else:
            gsnr = scale
        rows.append(GsnrRow(name, shape, gsnr, scale))
    return GsnrReport(tuple(rows), None if max_gsnr is None else float(max_gsnr), config, "checkpoint", framework)
