"""The opt-in fused path: a compiled kernel that reads ``p, g, m`` and writes ``p, m`` once.

SGD-SaI is memory-bound: a steady step must read the parameter, gradient and buffer and write the
parameter and buffer, five streams against AdamW's seven. The multi-tensor path gets close to that
on CPU by tiling; this path reaches it with code that ``torch.compile`` (Inductor) generates from
:func:`_sai_kernel`: C++/OpenMP on CPU, Triton on CUDA. No hand-written native code.

Tensors are passed as ``(rows, ROW)`` aliases (see :func:`_rows`), up to :data:`MAX_BATCH` per
compiled call (a call's dispatch costs tens of microseconds; in one call the loops also run
back to back). A batch is padded to a power of two with tiny zero tensors, and each padded length
has its own compiled function, so at most one graph is compiled per (length, dtype) and never more
than six lengths exist. Only steady tensors (buffer present) of at least :data:`MIN_NUMEL`
elements take this path; first steps, ``momentum=0`` without a buffer, non-contiguous layouts and
small tensors go to the multi-tensor path, which computes the same thing.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch._inductor.config as inductor_config
import torch.fx.experimental._config as fx_config

from ._functional import _group, _is_device_tensor, _multi_tensor_sgd_sai, _tensor_lr_steps
from ._tensors import local

__all__ = ["MAX_BATCH", "MIN_NUMEL", "ROW", "min_numel", "set_min_numel"]

Tensor = torch.Tensor

# Below this many elements a tensor goes through the multi-tensor path, where it shares tiles with
# other small tensors; above it the kernel's single pass over memory pays.
MIN_NUMEL = 1 << 16
# Elements per row of the kernel's 2-D view of a tensor (see _rows): 4 AVX-512 float32 vectors.
ROW = 64
# Tensors per compiled call: 2 calls for GPT-2's 50 matrices; beyond 32 slots compile time grows
# (about 1 s per slot, cold) for no measurable gain.
MAX_BATCH = 32

_compiled: dict[int, Callable[..., None]] = {}

# Inductor elides a float32 -> bfloat16/float16 -> float32 round trip inside one kernel (it reuses
# the float32 value), which would update a low-precision parameter from the unrounded buffer; the
# reference (and every other path) updates it from the buffer as stored. emulate_precision_casts
# keeps the rounding. Float32/float64 kernels have no such casts (on Triton it also turns off FMA
# contraction: one rounding more per element in a memory-bound kernel, no measurable cost).
_COMPILE_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = (
    {"emulate_precision_casts": True} if hasattr(inductor_config, "emulate_precision_casts") else {}
)
_padding: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor, Tensor]]] = {}


def _sai_kernel(param: Tensor, grad: Tensor, buffer: Tensor, coefficients: Tensor) -> None:
    """One steady SGD-SaI step on same-shaped tensors (compiled; also runs eagerly).

    ``coefficients`` is ``[mu, gradient weight, decay, step]`` in the compute dtype:
    ``m <- mu m + w g`` (``w = (1 - mu)``, negated for ``maximize``), then
    ``theta <- decay * theta - step * m`` with ``decay = 1 - lr wd`` and ``step = lr S``. The
    buffer is rounded to its dtype before the parameter update uses it, as in the reference.
    """
    compute = coefficients.dtype
    momentum = buffer.to(compute) * coefficients[0] + grad.to(compute) * coefficients[1]
    stored = momentum.to(buffer.dtype)
    theta = param.to(compute) * coefficients[2] - coefficients[3] * stored.to(compute)
    buffer.copy_(stored)
    param.copy_(theta.to(param.dtype))


def _sai_kernels(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor], coefficients: Tensor) -> None:
    """:func:`_sai_kernel` on each tensor of a batch; ``coefficients`` has one row per tensor."""
    for i in range(len(params)):
        _sai_kernel(params[i], grads[i], buffers[i], coefficients[i])


def _batch_kernel(length: int) -> Callable[..., None]:
    """The compiled :func:`_sai_kernels` for batches of ``length`` tensors.

    Each length gets a code object of its own: torch.compile keeps its graphs per code object and
    stops at 8, which one shared function would reach with a few lengths times a few dtypes.
    """
    kernel = _compiled.get(length)
    if kernel is None:
        code = _sai_kernels.__code__.replace(co_name=f"_sai_kernels_{length}")
        function = types.FunctionType(code, _sai_kernels.__globals__, code.co_name)
        kernel = _compiled[length] = torch.compile(function, dynamic=True, fullgraph=True, options=_COMPILE_OPTIONS)
    return kernel


def min_numel() -> int:
    """The current size threshold of the compiled kernel (see :data:`MIN_NUMEL`)."""
    return MIN_NUMEL


@contextlib.contextmanager
def set_min_numel(numel: int) -> Iterator[None]:
    """Temporarily sends tensors of at least ``numel`` elements through the kernel (tests, conformance).

    Examples:
        >>> with set_min_numel(2):
        ...     min_numel()
        2
        >>> min_numel() == MIN_NUMEL
        True
    """
    global MIN_NUMEL
    saved, MIN_NUMEL = MIN_NUMEL, int(numel)
    try:
        yield
    finally:
        MIN_NUMEL = saved


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows(tensor: Tensor, rows: int) -> Tensor:
    """The first ``rows * ROW`` elements of a contiguous tensor as a ``(rows, ROW)`` alias.

    Two properties make the compiled kernel fast and compile once: every tensor has the same row
    length, so the generated loop steps through whole rows with no remainder test (with a 1-D
    length the remainder test costs a 64-bit division per vector, half the bandwidth); and the
    alias is made with ``set_``, not ``view``, so it has no base whose shape would enter the
    kernel's guards (tensors of different ranks would each compile a kernel).
    """
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), (rows, ROW), (ROW, 1))


def _pads(device: torch.device, dtype: torch.dtype, count: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``count`` triples of distinct (2, ROW) zero tensors that fill a batch's unused slots.

    Distinct, because a tensor passed twice would make the graph guard on the aliasing; with zero
    coefficients they stay zero.
    """
    pads = _padding.setdefault((device, dtype), [])
    while len(pads) < count:
        pads.append(tuple(torch.zeros(2, ROW, dtype=dtype, device=device) for _ in range(3)))  # type: ignore[arg-type]
    return pads[:count]


def _padded_length(count: int) -> int:
    length = 1
    while length < count:
        length *= 2
    return length


def _fused_sgd_sai(
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
    hyper: dict[str, Any] = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "maximize": maximize}
    if torch.compiler.is_compiling():
        # Inside a compiled region the multi-tensor passes are fused by the outer compilation.
        _multi_tensor_sgd_sai(params, grads, momentum_buffers, scales, momentum_init=momentum_init, **hyper)
        return
    selected: list[int] = []
    rest: list[int] = []
    threshold = max(MIN_NUMEL, 2 * ROW)  # 2 rows at least: an extent of 1 would be specialized
    for i, (param, grad, buffer) in enumerate(zip(params, grads, momentum_buffers)):
        # Meta tensors (shape only, no data: deferred initialization, shape inference) take the
        # multi-tensor path, whose foreach ops run on meta as torch.optim's do; nothing compiles.
        ready = buffer is not None and param.dtype == grad.dtype == buffer.dtype and not param.is_meta
        if ready and buffer is not None:
            p, g, m = local(param), local(grad), local(buffer)
            ready = p.numel() >= threshold and p.is_contiguous() and g.is_contiguous() and m.is_contiguous()
        (selected if ready else rest).append(i)
    if rest:
        rest_buffers = [momentum_buffers[i] for i in rest]
        _multi_tensor_sgd_sai(
            [params[i] for i in rest],
            [grads[i] for i in rest],
            rest_buffers,
            [scales[i] for i in rest],
            momentum_init=momentum_init,
            **hyper,
        )
        for i, buffer in zip(rest, rest_buffers):
            momentum_buffers[i] = buffer
    if not selected:
        return
    grad_weight = -(1.0 - momentum) if maximize else 1.0 - momentum
    grouped = _group(
        [params[i] for i in selected], [grads[i] for i in selected], [momentum_buffers[i] for i in selected]
    )
    for (device, dtype), ((device_params, device_grads, device_buffers), indices) in grouped.items():
        compute = _compute_dtype(dtype)
        # One small host-to-device copy per step and device: every tensor's S.
        # lr * S and 1 - lr wd rounded as update_param rounds them (the lr's dtype, then compute).
        selected_scales = [scales[selected[i]] for i in indices]
        if _is_device_tensor(lr):
            lr_tensor = lr.to(device=device)  # type: ignore[union-attr]
            step_scales = _tensor_lr_steps(lr_tensor, selected_scales, compute)
            decay: Any = (1.0 - lr_tensor * weight_decay).to(compute)
        else:
            step_scales = torch.tensor(selected_scales, dtype=compute, device=device)
            step_scales *= lr
            decay = 1.0 - lr * weight_decay
        for start in range(0, len(indices), MAX_BATCH):
            thetas = [local(p) for p in device_params[start : start + MAX_BATCH]]
            gs = [local(g) for g in device_grads[start : start + MAX_BATCH]]
            ms = [local(m) for m in device_buffers[start : start + MAX_BATCH]]
            count = len(thetas)
            length = _padded_length(count)
            pads = _pads(device, dtype, length - count)
            coefficients = torch.zeros((length, 4), dtype=compute, device=device)  # pads: all 0
            coefficients[:count, 0] = momentum
            coefficients[:count, 1] = grad_weight
            coefficients[:count, 2] = decay
            coefficients[:count, 3] = step_scales[start : start + count]
            rows = [t.numel() // ROW for t in thetas]
            batch = [
                [_rows(t, r) for t, r in zip(thetas, rows)] + [pad[0] for pad in pads],
                [_rows(t, r) for t, r in zip(gs, rows)] + [pad[1] for pad in pads],
                [_rows(t, r) for t, r in zip(ms, rows)] + [pad[2] for pad in pads],
            ]
            # No duck sizing: equal row counts would otherwise become equality guards, and every
            # new pattern of equal sizes in a batch a new graph.
            with fx_config.patch(use_duck_shape=False):  # type: ignore[attr-defined]  # added by install_config_module
                _batch_kernel(length)(*batch, coefficients)
            for theta, g, m, r, row in zip(thetas, gs, ms, rows, coefficients):
                # Writes through the aliases bypass the tensors' version counters; bump them as an
                # in-place op would, so autograd still detects use of a stale saved parameter.
                torch.autograd.graph.increment_version(theta)
                torch.autograd.graph.increment_version(m)
                done = r * ROW
                if done < theta.numel():  # the last partial row, eagerly: the same function
                    _sai_kernel(theta.view(-1)[done:], g.view(-1)[done:], m.view(-1)[done:], row)
