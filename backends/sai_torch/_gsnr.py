"""Initialization at a block's first informative gradient: ``sai_core``'s rules on torch tensors,
with one host transfer per device.

A block is initialized at its first *informative* gradient (:func:`sai_core.is_informative`: every
element finite and, under ``zero_gradient="defer"``, not all zero). Its raw g-SNR ``G`` is
:func:`sai_core.raw_gsnr` (statistics in float32, float64 for float64 blocks, on the gradient
scaled by a power of two where its squares would overflow or underflow; the constant-gradient rule
included), computed on the whole tensor even when the parameter is sharded. ``M``, the normaliser,
is the largest ``G`` among the blocks initialized at the first step that initializes any; it is
frozen afterwards. The scale ``S`` is :func:`sai_core.scale_from_gsnr`.

For every pending block (one without a scale that has a gradient) three 0-d tensors are computed on
its device: ``G``, whether the gradient is informative, and whether it is finite (for the warning).
They are brought to the host together, one ``.tolist()`` of one stacked tensor per device: the
step's only sync. ``G``, ``M`` and ``S`` become Python floats, exactly the values of the
statistic's dtype, so the update passes ``lr * S`` to kernels as a plain scalar and a steady step
(every block initialized) needs no sync at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import array_api_compat.numpy as host_xp
import array_api_compat.torch as xp
import numpy as np
import torch

from sai_core import SaIConfig, is_informative, raw_gsnr, scale_from_gsnr

from ._tensors import whole

__all__ = ["Initialization", "initial_scales"]


class Initialization(NamedTuple):
    """What :func:`initial_scales` decided for each pending block."""

    scales: list[float | None]  # S per block; None: the gradient was not informative
    nonfinite: list[bool]  # per block: the gradient had a NaN or inf element
    max_gsnr: float | None  # M: the frozen one, the new one, or None while no block is initialized


def _to_floats(values: Sequence[torch.Tensor]) -> list[float]:
    """0-d tensors to Python floats with one transfer per device (the step's only sync).

    The tensors of one device are cast to float64 (it holds float32 values and booleans exactly)
    and stacked, so each device is read once however many values it holds.
    """
    by_device: dict[torch.device, list[int]] = {}
    for index, value in enumerate(values):
        by_device.setdefault(value.device, []).append(index)
    floats: list[float] = [0.0] * len(values)
    for indices in by_device.values():
        stacked = torch.stack([values[i].to(torch.float64) for i in indices]).tolist()
        for i, value in zip(indices, stacked):
            floats[i] = value
    return floats


def initial_scales(
    grads: Sequence[torch.Tensor],
    eps: Sequence[float],
    *,
    max_gsnr: float | None,
    config: SaIConfig,
) -> Initialization:
    """Scales ``S`` of blocks at their first gradient if informative, and the (possibly new) ``M``.

    Args:
        grads: the first gradients of blocks that are not initialized yet, none of them empty
            (sign does not matter: ``G`` and informativeness are invariant to it).
        eps: each block's g-SNR guard (its group's ``eps``).
        max_gsnr: the frozen ``M``, or ``None`` when no block is initialized yet: ``M`` is then the
            largest ``G`` of the informative gradients among ``grads`` (still ``None`` if there
            are none).
        config: the optimizer's knobs.

    Returns:
        An :class:`Initialization`: a Python float ``S`` per informative gradient (``None`` for
        the others), which gradients were non-finite, and ``M``.

    Examples:
        >>> from sai_core import resolve_config
        >>> grads = [torch.tensor([1.0, 2.0, 3.0]), torch.zeros(2, 2), torch.tensor([1.0, float("nan")])]
        >>> init = initial_scales(grads, [1e-8] * 3, max_gsnr=None, config=resolve_config("paper"))
        >>> round(init.max_gsnr, 4), init.scales, init.nonfinite   # G = sqrt(14) / 1 = M
        (3.7417, [1.0, None, None], [False, False, True])
        >>> init = initial_scales(grads[:2], [1e-8] * 2, max_gsnr=None, config=resolve_config("sgd-sai-1.0.3"))
        >>> [round(s, 4) for s in init.scales]   # a zero gradient is constant there: ||g|| / eps = 0
        [3.7417, 0.0]
    """
    if not grads:
        raise ValueError("initial_scales: no gradients")
    statistics: list[torch.Tensor] = []
    gsnrs: list[torch.Tensor] = []
    for grad, e in zip(grads, eps):
        if grad.numel() == 0:
            raise ValueError("initial_scales: a zero-size block is never initialized")
        g = whole(grad)
        gsnr = raw_gsnr(g, eps=e, config=config, xp=xp)
        gsnrs.append(gsnr)
        statistics += [gsnr, is_informative(g, config=config, xp=xp), xp.all(xp.isfinite(g))]  # type: ignore[attr-defined]  # in array_api_compat.torch, not in its stub
    values = _to_floats(statistics)
    raw = values[0::3]
    informative = [bool(v) for v in values[1::3]]
    nonfinite = [not v for v in values[2::3]]
    if max_gsnr is None and any(informative):
        # Python's max keeps the first value and replaces it only by a strictly larger one: the
        # reference's running ``where(value > M, value, M)`` (NaN included).
        max_gsnr = max(value for value, ok in zip(raw, informative) if ok)
    scales: list[float | None] = []
    for value, ok, gsnr in zip(raw, informative, gsnrs):
        if not ok:
            scales.append(None)
            continue
        # On the host, in NumPy scalars of the statistic's dtype: the division rounds as the
        # reference's does, and no torch tensor is read (the transfer above is the only one).
        host_dtype = np.float64 if gsnr.dtype == torch.float64 else np.float32
        scale = scale_from_gsnr(host_dtype(value), host_dtype(max_gsnr), config=config, xp=host_xp)
        scales.append(float(scale))
    return Initialization(scales, nonfinite, max_gsnr)
