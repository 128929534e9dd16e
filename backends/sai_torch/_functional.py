"""The SGD-SaI update as flat functions over tensor lists, in the torch.optim style.

One signature, three implementations, chosen by :func:`sgd_sai`:

* ``_single_tensor_sgd_sai``: a Python loop that applies :func:`sai_core.update_momentum` and
  :func:`sai_core.update_param` to each tensor, literally (in float32 for bfloat16/float16
  tensors, rounded once when stored). The in-torch oracle (``foreach=False``).
* ``_multi_tensor_sgd_sai``: ``torch._foreach_*`` kernels, in place. On CPU the lists are cut into
  cache-sized tiles so that the passes over a tile (momentum, decay, update) read main memory once;
  that makes it the fastest exact path on CPU, and the default everywhere. Parameters in bfloat16
  or float16 are updated through a float32 scratch of one tile, so that each is rounded once.
* ``_fused_sgd_sai`` (:mod:`sai_torch._fused`): a compiled kernel that reads ``p``, ``g``, ``m``
  once and writes ``p``, ``m`` once (``fused=True``).

Every implementation updates only tensors whose scale is known (the optimizer computes scales at a
block's first informative gradient and leaves the others out, see :mod:`sai_torch._gsnr`), creates
missing momentum buffers and writes them back into ``momentum_buffers``, and takes scalars as
Python floats so that a steady step never waits for the device. A ``DTensor`` is updated through its local shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import array_api_compat.torch as xp
import numpy as np
import torch
from torch.optim.optimizer import Optimizer

from sai_core import SaIConfig, compute_dtype, update_momentum, update_param

from ._tensors import local, local_all

__all__ = ["sgd_sai"]

Tensor = torch.Tensor

# Bytes of one operand in a CPU tile. The passes over a tile (momentum, then parameter) find its
# operands in cache, so main memory is read and written once per step, as by a fused kernel.
# A tensor of at least _PARALLEL_GRAIN elements is a tile of its own, cut into chunks of
# CPU_TILE_BYTES: each pass over it is a parallel region, and 4 MiB per operand (12 MiB for p, g,
# m) still fits a server's last-level cache while keeping regions few (their fork/join is what
# small chunks cost, more so when other processes hold the cores). Smaller tensors run on one
# thread each; they are grouped into tiles of CPU_SMALL_TILE_BYTES, which one core's L2 holds.
# Measured with benchmarks/torch_step.py on a 2-core EPYC (32 MiB L3, 2 MiB L2 per core).
CPU_TILE_BYTES: int | None = 4 << 20  # None: no tiling on CPU either (as on CUDA; for tests)
CPU_SMALL_TILE_BYTES = 512 << 10
# The float32 scratch through which low-precision parameters are updated, on every device.
SCRATCH_BYTES = 4 << 20
# at::internal::GRAIN_SIZE: torch runs elementwise kernels on fewer elements on one thread.
_PARALLEL_GRAIN = 32768

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _tile_numel(device: torch.device | None, dtype: torch.dtype, tensor_lr: bool = False) -> int | None:
    """Elements per chunk of a large tensor; ``None`` (no tiling) where kernels stream memory
    themselves (CUDA, or under torch.compile, where Inductor fuses the passes).

    Low-precision tensors are always tiled: a tile is the extent of their float32 scratch. So are
    tensors stepped by a tensor ``lr`` (outside compile): their products ``lr S m`` are formed
    before the sum, one tile at a time.
    """
    if dtype in _LOW_PRECISION or (tensor_lr and device is not None):
        return SCRATCH_BYTES // 4
    if device is None or device.type != "cpu" or CPU_TILE_BYTES is None:
        return None
    return max(1, CPU_TILE_BYTES // dtype.itemsize)


def _is_device_tensor(value: Any) -> bool:
    return isinstance(value, Tensor)


def sgd_sai(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    scales: Sequence[float],
    *,
    lr: float | Tensor,
    momentum: float,
    weight_decay: float,
    maximize: bool,
    momentum_init: str = "grad",
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    r"""Functional SGD-SaI step for tensors whose scale ``S`` is already known.

    For each parameter ``theta`` with gradient ``g`` (``g <- -g`` when ``maximize``):

    .. math::

        m &\leftarrow \mu m + (1 - \mu) g
            \quad (m = g \text{, or } (1 - \mu) g \text{ with momentum\_init="zeros", if no buffer}) \\
        \theta &\leftarrow \theta - \eta \lambda \theta - \eta S m

    With ``momentum == 0`` and no buffer, ``m`` is ``g`` and no buffer is created.

    Args:
        params: parameters to update (each has a gradient at this step).
        grads: their gradients (not modified).
        momentum_buffers: each parameter's buffer or ``None``; buffers this step creates are
            written into the list (the caller stores them).
        scales: each parameter's scale ``S`` as a Python float.
        lr: learning rate ``eta`` (float, or a 1-element tensor: then no value is read on the host).
        momentum: ``mu`` in ``[0, 1)``.
        weight_decay: decoupled weight decay ``lambda``.
        maximize: ascend instead of descend.
        momentum_init: ``"grad"`` or ``"zeros"`` (the first buffer is ``g`` or ``(1 - mu) g``).
        foreach: use the multi-tensor path (default: yes, on every device).
        fused: use the compiled single-pass kernel (default: no).

    Examples:
        >>> p = torch.ones(3)
        >>> buffers = [None]
        >>> sgd_sai([p], [torch.tensor([1.0, 0.0, -1.0])], buffers, [0.5],
        ...         lr=0.1, momentum=0.9, weight_decay=0.0, maximize=False)
        >>> p.tolist(), buffers[0].tolist()
        ([0.949999988079071, 1.0, 1.0499999523162842], [1.0, 0.0, -1.0])
    """
    if not (len(params) == len(grads) == len(momentum_buffers) == len(scales)):
        raise ValueError(
            f"Invalid lists: {len(params)} params, {len(grads)} grads, "
            f"{len(momentum_buffers)} momentum_buffers, {len(scales)} scales (must be equal)"
        )
    if foreach and fused:
        raise ValueError("Invalid foreach/fused: foreach=True and fused=True cannot be combined")
    if fused:
        from ._fused import _fused_sgd_sai

        func = _fused_sgd_sai
    elif foreach is None or foreach:
        # torch.optim defaults to the for-loop on CPU because its CPU foreach kernels are loops of
        # the same per-tensor ops. Ours is cache-tiled and strictly faster, so it is the default
        # on every device (on CUDA, where torch.optim also defaults to foreach, as usual).
        func = _multi_tensor_sgd_sai
    else:
        func = _single_tensor_sgd_sai
    func(
        params,
        grads,
        momentum_buffers,
        scales,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        maximize=maximize,
        momentum_init=momentum_init,
    )


def _tensor_lr_steps(lr: Tensor, scales: Sequence[float], compute: torch.dtype) -> Tensor:
    """Each tensor's step ``lr * S`` for a tensor ``lr``, rounded as :func:`sai_core.update_param` rounds it.

    There ``S`` is cast to the compute dtype and multiplied by the 0-d ``lr`` in the wider of the
    two dtypes, then cast to the compute dtype: here the same for all tensors in one kernel.
    """
    wide = torch.promote_types(lr.dtype, compute)
    values = torch.tensor(scales, dtype=compute, device=lr.device).to(wide)
    return (values * lr.to(wide)).to(compute)


def _new_buffer(grad: Tensor) -> Tensor:
    # Created on the gradient as given (a DTensor stays a DTensor, so checkpointing and resharding
    # see the same layout as the parameter) and filled through its local view.
    return torch.empty_like(grad, memory_format=torch.preserve_format)


def _single_tensor_sgd_sai(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    scales: Sequence[float],
    *,
    lr: float | Tensor,
    momentum: float,
    weight_decay: float,
    maximize: bool,
    momentum_init: str,
) -> None:
    config = SaIConfig(momentum_init=cast(Any, momentum_init))  # the only knob the update reads
    for i, (param, grad) in enumerate(zip(params, grads)):
        g = local(grad)
        if maximize:
            g = -g
        buffer = momentum_buffers[i]
        first = buffer is None
        # In the compute dtype (a no-op for float32/64): a low-precision buffer is then rounded
        # once, when stored, as on every path (the spec's rule for low-precision updates).
        compute = compute_dtype(g, xp=xp)
        direction = update_momentum(
            None if buffer is None else local(buffer).to(compute),
            g.to(compute),
            momentum=momentum,
            first=first,
            config=config,
            xp=xp,
        )
        if momentum != 0 or not first:
            # With momentum 0 no buffer is created; an existing one keeps being updated.
            if first:
                buffer = momentum_buffers[i] = _new_buffer(grad)
            stored = local(cast(Tensor, buffer))
            stored.copy_(direction)
            direction = stored
        # The scale travels as a host 0-d tensor: update_param casts it to the compute dtype, and
        # a CPU scalar may enter a kernel on any device without a transfer back.
        scale = torch.tensor(scales[i], dtype=torch.float64)
        theta = local(param)
        theta.copy_(update_param(theta, direction, scale, lr=lr, weight_decay=weight_decay, xp=xp))


# How a tensor's momentum is formed this step.
_STEADY = 0  # buffer present: m <- mu m + (1 - mu) g
_NEW = 1  # buffer created now: m = g (or (1 - mu) g)
_NONE = 2  # momentum 0 and no buffer: the direction is g itself


def _tile_bounds(numels: list[int], tile_numel: int | None, small_tile_numel: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` ranges of rows that form the tiles.

    A row of at least ``_PARALLEL_GRAIN`` elements (already cut to at most ``tile_numel``) is a
    tile of its own; consecutive smaller rows share tiles of at most ``small_tile_numel`` elements.
    """
    if tile_numel is None:
        return [(0, len(numels))]
    small_tile_numel = min(small_tile_numel, tile_numel)
    bounds = []
    start, total = 0, 0
    for i, n in enumerate(numels):
        large = n >= _PARALLEL_GRAIN
        if i > start and (large or total + n > small_tile_numel or numels[i - 1] >= _PARALLEL_GRAIN):
            bounds.append((start, i))
            start, total = i, 0
        total += n
    bounds.append((start, len(numels)))
    return bounds


def _split_large(
    columns: list[list[Any]], numels: list[int], tile_numel: int, operands: int = 3
) -> tuple[list[list[Any]], list[int]]:
    """Replaces every tensor longer than a tile by aligned flat chunks (views) in all columns.

    The first ``operands`` columns hold the rows' operands (param, grad, buffer), which are cut;
    the others hold per-row values (alpha, kind: a 0-d tensor alpha included), which are
    repeated. Rows whose operands are not all contiguous are left whole.
    """
    out: list[list[Any]] = [[] for _ in columns]
    out_numels: list[int] = []
    for row, n in enumerate(numels):
        values = [column[row] for column in columns]
        tensors = values[:operands]
        if n <= tile_numel or not all(t.is_contiguous() for t in tensors):
            for column, value in zip(out, values):
                column.append(value)
            out_numels.append(n)
            continue
        flats = [t.view(-1) for t in tensors]
        for start in range(0, n, tile_numel):
            for k, (column, value) in enumerate(zip(out, values)):
                column.append(flats[k][start : start + tile_numel] if k < operands else value)
            out_numels.append(min(tile_numel, n - start))
    return out, out_numels


def _group(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor | None]) -> dict:
    """torch.optim's grouping by (device, dtype), short-cut when there is one group (the usual case)."""
    if not torch.compiler.is_compiling() and len({(p.device, p.dtype) for p in params}) == 1:
        return {(params[0].device, params[0].dtype): ((params, grads, buffers), list(range(len(params))))}
    return Optimizer._group_tensors_by_device_and_dtype([params, grads, buffers], with_indices=True)  # type: ignore[list-item]


def _multi_tensor_sgd_sai(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    scales: Sequence[float],
    *,
    lr: float | Tensor,
    momentum: float,
    weight_decay: float,
    maximize: bool,
    momentum_init: str,
) -> None:
    if not params:
        return
    # The new-buffer coefficient folds the sign of maximize: m = -g or -(1 - mu) g.
    first_coefficient = (1.0 if momentum_init == "grad" else 1.0 - momentum) * (-1.0 if maximize else 1.0)
    for (device, dtype), ((device_params, device_grads, device_buffers), indices) in _group(
        params, grads, momentum_buffers
    ).items():
        if device is None:
            # Under torch.compile the lists are not grouped; Inductor fuses the passes itself.
            device, dtype = device_params[0].device, device_params[0].dtype
            tile_numel = _tile_numel(None, dtype)
        else:
            tile_numel = _tile_numel(device, dtype, tensor_lr=_is_device_tensor(lr))
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        if _is_device_tensor(lr):
            # A tensor lr stays on the device: the decay and each step lr * S are 0-d tensors
            # formed as update_param forms them (same operands, same promotion), so its value is
            # never read on the host.
            lr_tensor: Tensor = lr.to(device=device)  # type: ignore[union-attr]
            decay: float | Tensor = (1.0 - lr_tensor * weight_decay).to(compute)
            steps: list[Any] = list(_tensor_lr_steps(lr_tensor, [scales[i] for i in indices], compute).unbind())
        else:
            decay = 1.0 - lr * weight_decay
            # lr * S in the compute dtype, as update_param computes it (an IEEE product on the
            # host: the same rounding), as Python floats that every kernel takes exactly.
            host = np.float64 if compute == torch.float64 else np.float32
            host_scales: Any = np.asarray([scales[index] for index in indices], dtype=host)
            steps = (host_scales * host(lr)).tolist()
        kinds = [_STEADY] * len(indices)
        buffers: list[Tensor] = []
        for k, (buffer, grad, index) in enumerate(zip(device_buffers, device_grads, indices)):
            if buffer is None and momentum != 0:
                buffer = momentum_buffers[index] = _new_buffer(grad)
                kinds[k] = _NEW
            elif buffer is None:
                kinds[k] = _NONE
                buffer = grad  # placeholder: a _NONE row's buffer is never touched
            buffers.append(buffer)
        # The factor of each direction: -lr S, with the sign of maximize folded in for a raw
        # gradient (momentum 0, no buffer) instead of negating (and allocating) the gradient.
        flips = [maximize and kind == _NONE for kind in kinds]
        alphas: list[Any] = [step if flip else -step for step, flip in zip(steps, flips)]
        columns: list[list[Any]] = [
            local_all(device_params),
            local_all(device_grads),
            local_all(buffers),
            alphas,
            kinds,
        ]
        numels = [t.numel() for t in columns[0]]
        if dtype in _LOW_PRECISION and tile_numel is not None:
            # The float32 scratch holds one tile: no larger, in bytes, than the largest parameter.
            tile_numel = max(1, min(tile_numel, max(numels) * dtype.itemsize // 4))
        if tile_numel is not None and max(numels) > tile_numel:
            columns, numels = _split_large(columns, numels, tile_numel)
        bounds = _tile_bounds(numels, tile_numel, CPU_SMALL_TILE_BYTES // dtype.itemsize)
        scratch = None
        if dtype in _LOW_PRECISION:
            largest_tile = max(sum(numels[start:end]) for start, end in bounds)
            scratch = torch.empty(largest_tile, dtype=torch.float32, device=device)
        update = _Update(
            all_steady=all(kind == _STEADY for kind in kinds),
            momentum=momentum,
            maximize=maximize,
            first_coefficient=first_coefficient,
            decay=decay,
            one=torch.ones((), dtype=compute, device=device),
            scratch=scratch,
        )
        for start, end in bounds:
            update.apply(*(column[start:end] for column in columns))


class _Update:
    """The passes over one tile; constant across the tiles of a (device, dtype) bucket.

    In float32 and float64 the passes round exactly where :func:`sai_core.update_momentum` and
    :func:`sai_core.update_param` do, one rounding per product and per sum: ``mu m``, ``w g``,
    their sum; ``decay theta``, ``lr S m``, their difference. So this path equals the per-tensor
    path bit for bit. That rules out the kernels that contract a product and a sum into one FMA
    (``add`` with ``alpha``, ``lerp``, and ``addr`` in its scalar tail); ``addcmul`` with the
    scalar as ``value`` and a second factor of exactly 1 rounds ``value * t1`` and then the sum.
    """

    def __init__(
        self,
        *,
        all_steady: bool,
        momentum: float,
        maximize: bool,
        first_coefficient: float,
        decay: float | Tensor,
        one: Tensor,
        scratch: Tensor | None,
    ) -> None:
        self.all_steady = all_steady
        self.momentum = momentum
        # The gradient's weight in a steady buffer update, the sign of maximize folded in.
        self.grad_weight = -(1.0 - momentum) if maximize else 1.0 - momentum
        self.maximize = maximize
        self.first_coefficient = first_coefficient
        self.decay = decay
        self.one = one  # 0-d 1 in the tile's dtype: the exact second factor of addcmul
        self.scratch = scratch

    def apply(
        self, params: list[Tensor], grads: list[Tensor], buffers: list[Tensor], alphas: list[Any], kinds: list[int]
    ) -> None:
        if self.all_steady:
            steady, steady_grads, directions = buffers, grads, buffers
        else:
            steady = [m for m, kind in zip(buffers, kinds) if kind == _STEADY]
            steady_grads = [g for g, kind in zip(grads, kinds) if kind == _STEADY]
            fresh = [m for m, kind in zip(buffers, kinds) if kind == _NEW]
            if fresh:
                torch._foreach_copy_(fresh, [g for g, kind in zip(grads, kinds) if kind == _NEW])
                if self.first_coefficient != 1.0:
                    torch._foreach_mul_(fresh, self.first_coefficient)
            directions = [g if kind == _NONE else m for g, m, kind in zip(grads, buffers, kinds)]
        if steady and self.scratch is not None:
            # Low precision: mu m + w g in float32 in the scratch, as the per-tensor path forms
            # it, then stored (rounded) once.
            views = self._scratch_views(steady)
            torch._foreach_copy_(views, steady)
            torch._foreach_mul_(views, self.momentum)
            torch._foreach_addcmul_(views, steady_grads, [self.one] * len(views), value=self.grad_weight)
            torch._foreach_copy_(steady, views)
        elif steady:
            torch._foreach_mul_(steady, self.momentum)
            torch._foreach_addcmul_(steady, steady_grads, [self.one] * len(steady), value=self.grad_weight)
        if self.scratch is None:
            self._update_in_place(params, directions, alphas)
        else:
            self._update_through_scratch(params, directions, alphas)

    def _scratch_views(self, tensors: list[Tensor]) -> list[Tensor]:
        """Consecutive float32 views of the scratch shaped as ``tensors``."""
        assert self.scratch is not None
        views: list[Tensor] = []
        offset = 0
        for t in tensors:
            views.append(self.scratch[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()
        return views

    def _update_in_place(self, params: list[Tensor], directions: list[Tensor], alphas: list[Any]) -> None:
        decay = self.decay
        if isinstance(decay, Tensor) or decay != 1.0:
            torch._foreach_mul_(params, decay)
        if isinstance(alphas[0], Tensor):
            # A tensor lr: alpha is a 0-d device tensor per tensor. addcmul with it as a factor
            # contracts the product and the sum into one FMA, so the products are formed first
            # (temporaries of one tile: tensor-lr buckets are always tiled).
            torch._foreach_add_(params, torch._foreach_mul(directions, alphas))
            return
        # theta <- theta + alpha_i * m_i, one alpha per tensor. torch has no foreach axpy with
        # per-tensor alphas; addcmul's ScalarList form is one, with the 0-d second factor 1.
        torch._foreach_addcmul_(params, directions, [self.one] * len(params), alphas)

    def _update_through_scratch(self, params: list[Tensor], directions: list[Tensor], alphas: list[Any]) -> None:
        # Low precision: decay theta + alpha m is formed in float32 in the scratch, with the
        # roundings of the float32 path, and stored once, as the spec asks (updates of
        # low-precision blocks in float32, rounded once when stored), not once per pass.
        views = self._scratch_views(params)
        torch._foreach_copy_(views, params)
        decay = self.decay
        if isinstance(decay, Tensor) or decay != 1.0:
            torch._foreach_mul_(views, decay)
        if isinstance(alphas[0], Tensor):
            for view, direction, alpha in zip(views, directions, alphas):
                # The product in float32 first (a low-precision operand would keep it low).
                view.add_(direction.to(view.dtype) * alpha)
        else:
            torch._foreach_addcmul_(views, directions, [self.one] * len(views), alphas)
        torch._foreach_copy_(params, views)
