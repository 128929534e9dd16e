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
from torch_helpers import assert_normwise_close  # noqa: E402

# float64 tolerance between paths: they round differently (a lerp against the reference's two
# products and a sum; the decay as one factor 1 - lr*wd; addcmul against update_param), each within
# a unit or two of 2**-53 per step; 7 steps of that stay far below 1e-13 relative.
FLOAT64_RTOL = 1e-13

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
    ("two groups", {}, {"lr": 0.05, "momentum": 0.0, "weight_decay": 0.1, "eps": 1e-6, "maximize": True}),
]

PATHS = {
    "foreach": {"foreach": True},
    "foreach as on CUDA": {"foreach": True},  # CPU tiling off: the device-generic foreach ops
    "default": {},
    "default, tensors of 16+ elements counted large": {},  # CPU: one addr_ per large tensor
    "fused": {"fused": True},
}


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


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(
    ("options", "second_group"),
    [case[1:] for case in PATH_CASES],
    ids=[case[0] for case in PATH_CASES],
)
def test_path_equals_per_tensor_path_over_seven_float64_steps(
    monkeypatch: pytest.MonkeyPatch, path: str, options, second_group
) -> None:
    expected_params, expected_state = _run(options, second_group, {"foreach": False})
    if path == "foreach as on CUDA":
        monkeypatch.setattr(functional, "CPU_TILE_BYTES", None)
    if path == "default, tensors of 16+ elements counted large":
        monkeypatch.setattr(functional, "_PARALLEL_GRAIN", 16)
    with fused_module.set_min_numel(2):  # so that the fused path's kernel sees every block but ()/(1,)
        params, state = _run(options, second_group, PATHS[path])
    for block, (got, want) in enumerate(zip(params, expected_params)):
        assert_normwise_close(got, want, FLOAT64_RTOL, f"{path}: params of block {block}")
    for block, (got, want) in enumerate(zip(state, expected_state)):
        assert got.keys() == want.keys(), f"{path}: state entries of block {block}"
        # S and M come from the same initialization code on every path: equal to the bit.
        assert got.get("scale") == want.get("scale")
        assert got.get("max_gsnr") == want.get("max_gsnr")
        if "momentum_buffer" in want:
            assert_normwise_close(got["momentum_buffer"], want["momentum_buffer"], FLOAT64_RTOL, f"{path}: buffer {block}")


@pytest.mark.parametrize("path", ["foreach", "foreach as on CUDA", "fused"])
def test_bfloat16_paths_agree_with_per_tensor_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    if path == "foreach as on CUDA":
        monkeypatch.setattr(functional, "CPU_TILE_BYTES", None)
    expected_params, expected_state = _run({}, None, {"foreach": False}, dtype=torch.bfloat16)
    with fused_module.set_min_numel(2):
        params, state = _run({}, None, PATHS[path], dtype=torch.bfloat16)
    for got, want in zip(params, expected_params):
        assert got.dtype == torch.bfloat16
        # Every path rounds the stored parameter and buffer once per step (float32 arithmetic),
        # but after different float32 operations (lerp, the kernel's products, the literal
        # path's mu * m + (1 - mu) * g), so a stored element may land one bfloat16 unit (2**-8
        # relative to the block's largest element) apart: the conformance suite's bfloat16
        # one-step tolerance, 8e-3, covers it.
        assert_normwise_close(got, want, 8e-3, f"{path}: bfloat16 params")
    assert [s.get("scale") for s in state] == [s.get("scale") for s in expected_state]


TILE_CASES = [
    # (desc, chunk bytes, small-tile bytes): tiny tiles cut every tensor into chunks, few per tile
    ("one float64 element per chunk", 8, 8),
    ("16 elements per chunk and tile", 128, 128),
    ("small tensors share tiles", 4096, 1024),
]
@pytest.mark.parametrize(("tile_bytes", "small_tile_bytes"), [case[1:] for case in TILE_CASES], ids=[case[0] for case in TILE_CASES])
@pytest.mark.parametrize("options", [{}, {"maximize": True}, {"momentum": 0.0}], ids=["defaults", "maximize", "momentum 0"])
def test_cache_tiling_changes_only_roundings(
    monkeypatch: pytest.MonkeyPatch, tile_bytes: int, small_tile_bytes: int, options
) -> None:
    untiled_params, untiled_state = _run(options, None, {"foreach": True})
    monkeypatch.setattr(functional, "CPU_TILE_BYTES", tile_bytes)
    monkeypatch.setattr(functional, "CPU_SMALL_TILE_BYTES", small_tile_bytes)
    monkeypatch.setattr(functional, "_PARALLEL_GRAIN", 16)  # so that SHAPES has large tensors
    tiled_params, tiled_state = _run(options, None, {"foreach": True})
    # CPU kernels round a vectorized body and a scalar tail differently (the compiler contracts
    # the tail's a*b + c into one FMA), and tile boundaries move elements between the two: a unit
    # of 2**-53 per step at most, well inside FLOAT64_RTOL.
    for got, want in zip(tiled_params, untiled_params):
        assert_normwise_close(got, want, FLOAT64_RTOL, "params")
    for got, want in zip(tiled_state, untiled_state):
        if "momentum_buffer" in want:
            assert_normwise_close(got["momentum_buffer"], want["momentum_buffer"], FLOAT64_RTOL, "buffers")


LAYOUT_CASES = [
    # (desc, parameter factory): layouts that cannot be viewed flat
    ("transposed matrix", lambda g: torch.randn(300, 200, generator=g, dtype=torch.float64).t()),
    ("channels_last conv weight", lambda g: torch.randn(32, 16, 9, 9, generator=g, dtype=torch.float64).to(
        memory_format=torch.channels_last
    )),
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
    assert_normwise_close(results[1], results[0], FLOAT64_RTOL, f"{path}: params")


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
    ("numels", "tile", "small", "expected"), [case[1:] for case in TILE_BOUND_CASES], ids=[case[0] for case in TILE_BOUND_CASES]
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
        [p], [torch.ones(3)], [None], [1.0], lr=0.1, momentum=0.9, weight_decay=0.0, maximize=False,
        foreach=foreach, fused=fused,
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
        for step in range(2):
            for p in params:
                p.grad = torch.randn(p.shape)
            opt.step()
    assert lengths == [4, 2]  # 6 tensors: a batch of 4, then 2
