"""The implementations behind ``sai_torch.sgd_sai`` agree, and the dispatcher picks as documented.

The per-tensor path (``foreach=False``) applies ``sai_core``'s functions literally and is the
yardstick here; the conformance suite compares every path with the NumPy reference as well.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")


import sai_torch._functional as functional  # noqa: E402
import sai_torch._fused as fused_module  # noqa: E402
from sai_torch import SGDSaI  # noqa: E402

# In float32 and float64 every path rounds where update_momentum and update_param round (one
# rounding per product and per sum, no FMA contraction), so they agree bit for bit: no tolerance.

SHAPES = ((), (1,), (7,), (5, 4), (300,))
# Steps (0-based) at which a block has no gradient: the 0-d block first appears at step 2 (a late
# initialization with the frozen M), block 2 skips step 4.
ABSENT = {0: (0,), 1: (0,), 4: (2,)}

PATH_CASES = [
    # (desc, optimizer options, second group options or None)
    ("defaults (sgd-sai: S = G)", {}, None),
    ("paper (S = G / M)", {"preset": "paper", "lr": 0.05}, None),
    ("momentum 0, no buffer", {"momentum": 0.0}, None),
    ("maximize", {"maximize": True}, None),
    ("maximize, momentum 0", {"maximize": True, "momentum": 0.0}, None),
    ("first buffer (1 - mu) g, pytorch-optimizer-4", {"preset": "pytorch-optimizer-4"}, None),
    ("no weight decay, momentum 0.99", {"weight_decay": 0.0, "momentum": 0.99}, None),
    ("tensor lr", {"lr": torch.tensor(0.02, dtype=torch.float64)}, None),
    ("float32 tensor lr, maximize", {"lr": torch.tensor(0.02), "maximize": True}, None),
    ("two groups", {}, {"lr": 0.05, "momentum": 0.0, "weight_decay": 0.1, "eps": 1e-6, "maximize": True}),
]

PATHS = {
    "foreach": {"foreach": True},
    "foreach as on CUDA": {"foreach": True},  # CPU tiling off: the device-generic foreach ops
    "default": {},
    "default, tensors of 16+ elements counted large": {},  # CPU: a large tensor is a tile of its own
    "fused": {"fused": True},
}


def _assert_equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype, what
    differ = int((got != want).sum())
    worst = float((got.double() - want.double()).abs().max()) if got.numel() else 0.0
    assert differ == 0, f"{what}: {differ} of {got.numel()} elements differ (max abs {worst:.3g})"


def _run(options: dict[str, Any], second_group: dict[str, Any] | None, path: dict[str, Any], dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64).to(dtype)) for s in SHAPES]
    if second_group is None:
        groups: Any = params
    else:
        groups = [{"params": params[:3]}, {"params": params[3:], **second_group}]
    opt = SGDSaI(groups, **options, **path)
    for step in range(7):
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=generator, dtype=torch.float64) + 0.3 * i
            p.grad = None if i in ABSENT.get(step, ()) else g.to(dtype)
        opt.step()
    return params, [opt.state.get(p, {}) for p in params]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(
    ("options", "second_group"),
    [case[1:] for case in PATH_CASES],
    ids=[case[0] for case in PATH_CASES],
)
def test_path_equals_per_tensor_path_bit_for_bit_over_seven_steps(
    monkeypatch: pytest.MonkeyPatch, path: str, options, second_group, dtype: torch.dtype
) -> None:
    expected_params, expected_state = _run(options, second_group, {"foreach": False}, dtype=dtype)
    if path == "foreach as on CUDA":
        monkeypatch.setattr(functional, "CPU_TILE_BYTES", None)
    if path == "default, tensors of 16+ elements counted large":
        monkeypatch.setattr(functional, "_PARALLEL_GRAIN", 16)
    with fused_module.set_min_numel(2):  # so that the fused path's kernel sees every block but ()/(1,)
        params, state = _run(options, second_group, PATHS[path], dtype=dtype)
    for block, (got, want) in enumerate(zip(params, expected_params)):
        _assert_equal(got, want, f"{path}: params of block {block}")
    for block, (got, want) in enumerate(zip(state, expected_state)):
        assert got.keys() == want.keys(), f"{path}: state entries of block {block}"
        assert got.get("scale") == want.get("scale")
        assert got.get("max_gsnr") == want.get("max_gsnr")
        if "momentum_buffer" in want:
            _assert_equal(got["momentum_buffer"], want["momentum_buffer"], f"{path}: buffer {block}")


# Shapes for the low-precision comparison: the first is above the fused kernel's MIN_NUMEL (so the
# compiled kernel runs, with a partial last row), the others take the multi-tensor path.
LOW_PRECISION_SHAPES = ((300, 257), (257,), ())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("path", ["foreach", "foreach as on CUDA", "fused"])
@pytest.mark.parametrize(
    "options", [{}, {"maximize": True}, {"lr": torch.tensor(0.01)}], ids=["defaults", "maximize", "tensor lr"]
)
def test_low_precision_paths_equal_per_tensor_path_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, path: str, dtype: torch.dtype, options: dict[str, Any]
) -> None:
    # Every path forms buffer and parameter in float32 with the per-tensor path's roundings and
    # stores each once, so the stored low-precision values are the same (SPEC asks for one
    # rounding per store on every path; the multi-tensor path computes through a float32 scratch).
    if path == "foreach as on CUDA":
        monkeypatch.setattr(functional, "CPU_TILE_BYTES", None)
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in LOW_PRECISION_SHAPES]
    reference = [torch.nn.Parameter(t.clone()) for t in start]
    other = [torch.nn.Parameter(t.clone()) for t in start]
    ref_opt = SGDSaI(reference, **options, foreach=False)
    other_opt = SGDSaI(other, **options, **PATHS[path])
    for _ in range(6):
        for i, (p, q) in enumerate(zip(reference, other)):
            p.grad = (torch.randn(p.shape, generator=generator, dtype=torch.float64) + 0.3 * i).to(dtype)
            q.grad = p.grad.clone()
        ref_opt.step()
        other_opt.step()
    for block, (p, q) in enumerate(zip(reference, other)):
        _assert_equal(q.detach(), p.detach(), f"{path}: {dtype} params of block {block}")
        _assert_equal(
            other_opt.state[q]["momentum_buffer"],
            ref_opt.state[p]["momentum_buffer"],
            f"{path}: {dtype} buffer {block}",
        )


TILE_CASES = [
    # (desc, chunk bytes, small-tile bytes): tiny tiles cut every tensor into chunks, few per tile
    ("one float64 element per chunk", 8, 8),
    ("16 elements per chunk and tile", 128, 128),
    ("small tensors share tiles", 4096, 1024),
]


@pytest.mark.parametrize(
    ("tile_bytes", "small_tile_bytes"), [case[1:] for case in TILE_CASES], ids=[case[0] for case in TILE_CASES]
)
@pytest.mark.parametrize(
    "options",
    [{}, {"maximize": True}, {"momentum": 0.0}, {"lr": torch.tensor(0.02)}],
    ids=["defaults", "maximize", "momentum 0", "tensor lr"],
)
def test_cache_tiling_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, tile_bytes: int, small_tile_bytes: int, options
) -> None:
    untiled_params, untiled_state = _run(options, None, {"foreach": True})
    monkeypatch.setattr(functional, "CPU_TILE_BYTES", tile_bytes)
    monkeypatch.setattr(functional, "CPU_SMALL_TILE_BYTES", small_tile_bytes)
    monkeypatch.setattr(functional, "_PARALLEL_GRAIN", 16)  # so that SHAPES has large tensors
    tiled_params, tiled_state = _run(options, None, {"foreach": True})
    # Tile boundaries move elements between a kernel's vectorized body and its scalar tail; the
    # kernels used round both alike (no FMA contraction), so tiling changes no bit.
    for got, want in zip(tiled_params, untiled_params):
        _assert_equal(got, want, "params")
    for got, want in zip(tiled_state, untiled_state):
        if "momentum_buffer" in want:
            _assert_equal(got["momentum_buffer"], want["momentum_buffer"], "buffers")


LAYOUT_CASES = [
    # (desc, parameter factory): layouts that cannot be viewed flat
    ("transposed matrix", lambda g: torch.randn(300, 200, generator=g, dtype=torch.float64).t()),
    (
        "channels_last conv weight",
        lambda g: torch.randn(32, 16, 9, 9, generator=g, dtype=torch.float64).to(memory_format=torch.channels_last),
    ),
]


@pytest.mark.parametrize("path", ["foreach", "fused"])
@pytest.mark.parametrize("make", [case[1] for case in LAYOUT_CASES], ids=[case[0] for case in LAYOUT_CASES])
def test_non_contiguous_parameters_match_the_per_tensor_path(path: str, make) -> None:
    results = []
    for options in ({"foreach": False}, PATHS[path]):
        generator = torch.Generator().manual_seed(0)
        param = torch.nn.Parameter(make(generator))
        assert not param.is_contiguous()
        opt = SGDSaI([param], **options)
        for _ in range(3):
            param.grad = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(
                memory_format=torch.channels_last if param.dim() == 4 else torch.contiguous_format
            )
            opt.step()
        results.append(param)
    _assert_equal(results[1], results[0], f"{path}: params")


GRAIN = functional._PARALLEL_GRAIN
TILE_BOUND_CASES = [
    # (desc, row sizes, chunk size, small-tile size, expected [start, end) ranges)
    ("no tiling (CUDA, compile)", [5, GRAIN, 7], None, 100, [(0, 3)]),
    ("small rows share a tile", [30, 30, 30], 10**6, 100, [(0, 3)]),
    ("small tiles close at their cap", [60, 30, 30, 60], 10**6, 100, [(0, 2), (2, 4)]),
    ("a large row is a tile of its own", [30, GRAIN, 30, 30], 10**6, 100, [(0, 1), (1, 2), (2, 4)]),
    ("consecutive large rows", [GRAIN, GRAIN + 1], 10**6, 100, [(0, 1), (1, 2)]),
    ("a row above the small cap alone", [150, 10], 10**6, 100, [(0, 1), (1, 2)]),
]


@pytest.mark.parametrize(
    ("numels", "tile", "small", "expected"),
    [case[1:] for case in TILE_BOUND_CASES],
    ids=[case[0] for case in TILE_BOUND_CASES],
)
def test_tile_bounds(numels: list[int], tile, small: int, expected: list[tuple[int, int]]) -> None:
    assert functional._tile_bounds(numels, tile, small) == expected


DISPATCH_CASES = [
    # (desc, foreach, fused, implementation)
    ("default", None, None, "_multi_tensor_sgd_sai"),
    ("foreach=True", True, None, "_multi_tensor_sgd_sai"),
    ("foreach=False", False, None, "_single_tensor_sgd_sai"),
    ("fused=True", None, True, "_fused_sgd_sai"),
    ("fused=True, foreach=False", False, True, "_fused_sgd_sai"),
    ("fused=False", None, False, "_multi_tensor_sgd_sai"),
]


@pytest.mark.parametrize(
    ("foreach", "fused", "implementation"),
    [case[1:] for case in DISPATCH_CASES],
    ids=[case[0] for case in DISPATCH_CASES],
)
def test_dispatcher_picks_the_documented_path(monkeypatch: pytest.MonkeyPatch, foreach, fused, implementation) -> None:
    called = []
    for name in ("_multi_tensor_sgd_sai", "_single_tensor_sgd_sai"):
        monkeypatch.setattr(functional, name, lambda *a, _name=name, **k: called.append(_name))
    monkeypatch.setattr(fused_module, "_fused_sgd_sai", lambda *a, **k: called.append("_fused_sgd_sai"))
    p = torch.zeros(3)
    functional.sgd_sai(
        [p],
        [torch.ones(3)],
        [None],
        [1.0],
        lr=0.1,
        momentum=0.9,
        weight_decay=0.0,
        maximize=False,
        foreach=foreach,
        fused=fused,
    )
    assert called == [implementation]


def test_fused_path_sends_large_steady_tensors_through_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, list[int]]] = []

    def counting_kernel(length: int):  # noqa: ANN202
        def run(params, grads, buffers, coefficients):  # noqa: ANN001
            calls.append((length, [p.numel() for p in params]))
            fused_module._sai_kernels(params, grads, buffers, coefficients)

        return run

    monkeypatch.setattr(fused_module, "_batch_kernel", counting_kernel)
    large = torch.nn.Parameter(torch.zeros(fused_module.MIN_NUMEL + 5))  # a partial last row
    small = torch.nn.Parameter(torch.zeros(8))
    opt = SGDSaI([large, small], fused=True)
    for step in range(3):
        large.grad, small.grad = torch.full_like(large, float(step + 1)), torch.ones(8)
        opt.step()
    # Step 1 creates the buffers (multi-tensor path); steps 2-3 run the kernel on the large
    # tensor's whole rows, in a batch of 1.
    assert calls == [(1, [fused_module.MIN_NUMEL])] * 2


def test_fused_batches_are_padded_to_powers_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    lengths: list[int] = []
    real = fused_module._batch_kernel
    monkeypatch.setattr(fused_module, "_batch_kernel", lambda length: lengths.append(length) or real(length))
    monkeypatch.setattr(fused_module, "MAX_BATCH", 4)
    params = [torch.nn.Parameter(torch.zeros(2 * fused_module.ROW + i)) for i in range(6)]
    opt = SGDSaI(params, fused=True)
    with fused_module.set_min_numel(2):
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape)
            opt.step()
    assert lengths == [4, 2]  # 6 tensors: a batch of 4, then 2
