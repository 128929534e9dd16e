"""Scales at initialization: ``sai_core``'s g-SNR on torch tensors, one host transfer per device.

A block is initialized at its first gradient. Its raw g-SNR ``G`` is :func:`sai_core.raw_gsnr`
(statistics in float32, float64 for float64 blocks; the constant-gradient rule included), computed
on the whole tensor even when the parameter is sharded. ``M``, the normaliser, is the largest ``G``
among the blocks initialized at the first step that initializes any; it is frozen afterwards. The
scale ``S`` is :func:`sai_core.scale_from_gsnr`.

``G``, ``M`` and ``S`` become Python floats, exactly the values of the statistic's dtype: the
update then passes ``lr * S`` to kernels as a plain scalar, so a steady step needs no device sync.
The one sync happens here, once per initialization step (``.tolist()`` of the stacked ``G`` of a
device).
"""

from __future__ import annotations

from collections.abc import Sequence

import array_api_compat.torch as xp
import torch

from sai_core import SaIConfig, raw_gsnr, scale_from_gsnr

from ._tensors import whole

__all__ = ["initial_scales"]


def _to_floats(values: Sequence[torch.Tensor]) -> list[float]:
    """0-d tensors to Python floats with one transfer per device (the init step's only sync)."""
    by_device: dict[torch.device, list[int]] = {}
    for index, value in enumerate(values):
        by_device.setdefault(value.device, []).append(index)
    floats: list[float] = [0.0] * len(values)
    for indices in by_device.values():
        # float64 holds float32 values exactly, so stacking loses nothing.
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
) -> tuple[list[float], float]:
    """Scales ``S`` of blocks at their first gradient, and the (possibly new) frozen ``M``.

    Args:
        grads: the blocks' first gradients (sign does not matter: ``G`` is invariant to it).
        eps: each block's g-SNR guard (its group's ``eps``).
        max_gsnr: the frozen ``M``, or ``None`` when this is the first initialization step (``M``
            is then the largest ``G`` of ``grads``).
        config: the optimizer's knobs.

    Returns:
        ``(scales, max_gsnr)``: one Python float per block, and ``M``.

    Examples:
        >>> from sai_core import resolve_config
        >>> grads = [torch.tensor([1.0, 2.0, 3.0]), torch.zeros(2, 2)]
        >>> scales, m = initial_scales(grads, [1e-8, 1e-8], max_gsnr=None, config=resolve_config())
        >>> round(m, 4), [round(s, 4) for s in scales]   # G = sqrt(14) / 1 and sqrt(4) = 2
        (3.7417, [1.0, 0.5345])
    """
    if not grads:
        raise ValueError("initial_scales: no gradients")
    gsnrs = [raw_gsnr(whole(g), eps=e, config=config, xp=xp) for g, e in zip(grads, eps)]
    values = _to_floats(gsnrs)
    if max_gsnr is None:
        # Python's max keeps the first value and replaces it only by a strictly larger one: the
        # reference's running ``where(value > M, value, M)`` (NaN included).
        max_gsnr = max(values)
    scales = []
    for value, gsnr in zip(values, gsnrs):
        # On the host, in the statistic's dtype: the division rounds as the reference's does.
        as_tensor = torch.tensor(value, dtype=gsnr.dtype)
        normaliser = torch.tensor(max_gsnr, dtype=gsnr.dtype)
        scales.append(float(scale_from_gsnr(as_tensor, normaliser, config=config, xp=xp)))
    return scales, max_gsnr
