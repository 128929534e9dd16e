"""Contract v2 initialization in ``sai_torch.SGDSaI``, on every path, in float32 and float64.

A tensor is initialized at its first *informative* gradient (finite and, under
``zero_gradient="defer"``, not all zero). An uninformative first gradient leaves it untouched and
uninitialized exactly as if it had none; a non-finite one warns once per tensor. Zero-size tensors
never initialize. The statistic neither overflows nor underflows for any finite gradient. Each case
is compared with an identical run without that gradient (bit for bit) and with the float64 NumPy
reference, ``sai_core.ReferenceSGDSaI``, within the conformance suite's tolerance for the dtype.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_helpers import assert_normwise_close  # noqa: E402

import sai_torch._fused as fused_module  # noqa: E402
from sai_conformance._tolerances import TOLERANCES  # noqa: E402
from sai_core import NonFiniteGradientWarning, ReferenceSGDSaI  # noqa: E402
from sai_torch import SGDSaI  # noqa: E402

PATHS = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
over_paths = pytest.mark.parametrize("path", list(PATHS))
over_dtypes = pytest.mark.parametrize("dtype_name", list(DTYPES))

SHAPES = ((8, 16), (7,), (4, 4), (3, 4))
BAD = 1  # the block whose first gradient is not informative
STEPS = 3


def _initial(shapes: tuple[tuple[int, ...], ...], dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]


def _normal_grad(shape: tuple[int, ...], step: int, block: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 * step + block)
    # A per-block mean offset makes the blocks' g-SNRs, and so M, differ.
    return (0.5 * block + torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)


def _bad_grad(kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros(shape, dtype=dtype)
    grad = _normal_grad(shape, 99, 0, dtype)
    grad.view(-1)[2] = float(kind)  # "nan", "inf" or "-inf"
    return grad


def _grads(shapes, dtype: torch.dtype, first: dict[int, Any]) -> list[list[torch.Tensor | None]]:
    """Normal gradients for every block and step, except ``first[block]`` at step 0 ("absent": None)."""
    rows = []
    for step in range(STEPS):
        row: list[torch.Tensor | None] = []
        for block, shape in enumerate(shapes):
            if step == 0 and block in first:
                entry = first[block]
                row.append(None if entry == "absent" else entry)
            else:
                row.append(_normal_grad(shape, step, block, dtype))
        rows.append(row)
    return rows


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _snapshot(opt: SGDSaI, params: list[torch.Tensor]) -> list[tuple[torch.Tensor, dict[str, Any] | None]]:
    """Each parameter and its state entry (``None``: the optimizer holds no state for it)."""
    return [(p.detach().clone(), _copy_state(opt.state[p]) if p in opt.state else None) for p in params]


def _train(
    initial: list[torch.Tensor],
    grads: list[list[torch.Tensor | None]],
    path: str,
    *,
    groups: list[list[int]] | None = None,
    names: list[str] | None = None,
    **options: Any,
) -> tuple[list[torch.Tensor], SGDSaI, list[list], list[warnings.WarningMessage]]:
    """Runs every step; returns the parameters, the optimizer, a snapshot after each step and the
    non-finite-gradient warnings."""
    params = [torch.nn.Parameter(t.clone()) for t in initial]
    entries: list[Any] = params if names is None else list(zip(names, params))
    if groups is None:
        opt = SGDSaI(entries, **PATHS[path], **options)
    else:
        opt = SGDSaI([{"params": [entries[i] for i in group]} for group in groups], **PATHS[path], **options)
    snapshots = []
    with fused_module.set_min_numel(2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteGradientWarning)
        for row in grads:
            for p, g in zip(params, row):
                p.grad = None if g is None else g.clone()
            opt.step()
            snapshots.append(_snapshot(opt, params))
    return params, opt, snapshots, [w for w in caught if issubclass(w.category, NonFiniteGradientWarning)]


def _reference(
    initial: list[torch.Tensor], grads: list[list[torch.Tensor | None]], steps: int = STEPS, **options: Any
) -> ReferenceSGDSaI:
    """The float64 reference fed the same (dtype-rounded) values."""
    as_numpy = lambda t: None if t is None else t.detach().to(torch.float64).numpy()  # noqa: E731
    reference = ReferenceSGDSaI([as_numpy(t) for t in initial], **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteGradientWarning)
        for row in grads[:steps]:
            reference.step([as_numpy(g) for g in row])
    return reference


def _assert_close(got: float, want: float, rtol: float, what: str) -> None:
    assert abs(got - want) <= rtol * abs(want), f"{what}: {got!r} vs the reference's {want!r} (rtol {rtol:g})"


def _assert_same_snapshot(got, want, step: int) -> None:
    for block, ((got_param, got_state), (want_param, want_state)) in enumerate(zip(got, want)):
        assert torch.equal(got_param, want_param), f"step {step + 1}, block {block}: params"
        assert (got_state is None) == (want_state is None), f"step {step + 1}, block {block}: state presence"
        if want_state is None:
            continue
        assert got_state.keys() == want_state.keys()
        for key, value in want_state.items():
            other = got_state[key]
            same = torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value
            assert same, f"step {step + 1}, block {block}: {key}"


# --- uninformative first gradients are deferred ----------------------------------------------------

DEFERRED_CASES = [
    # (desc, preset, knob overrides, first gradient of block 1, warnings expected)
    ("NaN element, sgd-sai", "sgd-sai", {}, "nan", 1),
    ("inf element, sgd-sai", "sgd-sai", {}, "inf", 1),
    ("NaN element, paper: M is not poisoned", "paper", {}, "nan", 1),
    ("-inf element, paper", "paper", {}, "-inf", 1),
    ("NaN element under a port preset too", "sgd-sai-1.0.3", {}, "nan", 1),
    ("all zero, sgd-sai", "sgd-sai", {}, "zero", 0),
    ("all zero, paper", "paper", {}, "zero", 0),
]


@over_dtypes
@over_paths
@pytest.mark.parametrize(
    ("preset", "knobs", "kind", "expected_warnings"),
    [c[1:] for c in DEFERRED_CASES],
    ids=[c[0] for c in DEFERRED_CASES],
)
def test_uninformative_first_gradient_is_as_if_absent(
    path: str, dtype_name: str, preset: str, knobs: dict, kind: str, expected_warnings: int
) -> None:
    dtype = DTYPES[dtype_name]
    initial = _initial(SHAPES, dtype)
    grads = _grads(SHAPES, dtype, {BAD: _bad_grad(kind, SHAPES[BAD], dtype)})
    absent = _grads(SHAPES, dtype, {BAD: "absent"})
    params, opt, snapshots, caught = _train(initial, grads, path, preset=preset, **knobs)
    control_params, control, control_snapshots, _ = _train(initial, absent, path, preset=preset, **knobs)

    # Step 1: the bad tensor is untouched (no decay, no buffer, no state); every other tensor's
    # scale and M are exactly those of the run where it had no gradient.
    (bad_param, bad_state) = snapshots[0][BAD]
    assert torch.equal(bad_param, initial[BAD])
    assert bad_state is None, "no state entry (so none in state_dict) before its first informative gradient"
    for block, ((_, state), (_, control_state)) in enumerate(zip(snapshots[0], control_snapshots[0])):
        if block != BAD:
            assert state["scale"] == control_state["scale"] and state["max_gsnr"] == control_state["max_gsnr"]
    # Every step, every tensor and every state entry: bit for bit the run without that gradient.
    for step, (got, want) in enumerate(zip(snapshots, control_snapshots)):
        _assert_same_snapshot(got, want, step)

    # Step 2 (its first finite gradient) initializes it as the float64 reference does.
    rtol = TOLERANCES[dtype_name].one_step
    reference = _reference(initial, grads, steps=2, preset=preset, **knobs)
    _assert_close(snapshots[1][BAD][1]["scale"], float(reference.scale[BAD]), rtol, "scale of the late tensor")
    _assert_close(snapshots[1][BAD][1]["max_gsnr"], float(reference.max_gsnr), rtol, "M")
    reference = _reference(initial, grads, preset=preset, **knobs)
    for block, (got, want) in enumerate(zip(params, reference.params)):
        assert_normwise_close(
            got, torch.from_numpy(want), TOLERANCES[dtype_name].trajectory, f"params of block {block}"
        )
    assert len(caught) == expected_warnings


ZERO_INITIALIZES_CASES = [
    # (desc, preset, knob overrides): zero_gradient="degenerate", an all-zero gradient is constant
    ("sgd-sai-1.0.3: G = ||0|| / eps = 0, the tensor is frozen", "sgd-sai-1.0.3", {}),
    ("pytorch-optimizer-4: G = ||0|| = 0", "pytorch-optimizer-4", {}),
    ("sgd-sai-1.1.0: G = sqrt(n)", "sgd-sai-1.1.0", {}),
    ("paper with zero_gradient='degenerate': G = sqrt(n)", "paper", {"zero_gradient": "degenerate"}),
]


@over_dtypes
@over_paths
@pytest.mark.parametrize(
    ("preset", "knobs"), [c[1:] for c in ZERO_INITIALIZES_CASES], ids=[c[0] for c in ZERO_INITIALIZES_CASES]
)
def test_zero_first_gradient_initializes_under_zero_gradient_degenerate(
    path: str, dtype_name: str, preset: str, knobs: dict
) -> None:
    dtype = DTYPES[dtype_name]
    initial = _initial(SHAPES, dtype)
    grads = _grads(SHAPES, dtype, {BAD: torch.zeros(SHAPES[BAD], dtype=dtype)})
    params, opt, snapshots, caught = _train(initial, grads, path, preset=preset, **knobs)
    reference = _reference(initial, grads, steps=1, preset=preset, **knobs)
    rtol = TOLERANCES[dtype_name].one_step
    state = snapshots[0][BAD][1]
    assert state is not None, "the zero gradient initializes the tensor under these knobs"
    assert state["scale"] == pytest.approx(float(reference.scale[BAD]), rel=rtol, abs=0.0)
    _assert_close(state["max_gsnr"], float(reference.max_gsnr), rtol, "M")
    reference = _reference(initial, grads, preset=preset, **knobs)
    for block, (got, want) in enumerate(zip(params, reference.params)):
        assert_normwise_close(
            got, torch.from_numpy(want), TOLERANCES[dtype_name].trajectory, f"params of block {block}"
        )
    assert not caught


# --- the statistic neither overflows nor underflows -------------------------------------------------

# First-gradient magnitudes whose squares overflow / underflow the dtype (eps 0, as in the golden
# "overflow" cases, so that an underflowing std would show as a division by zero).
EXTREMES = {"float32": (1e30, 1e-30), "float64": (1e300, 1e-300)}


@over_dtypes
@over_paths
def test_extreme_first_gradients_give_the_references_scales(path: str, dtype_name: str) -> None:
    dtype = DTYPES[dtype_name]
    huge, tiny = EXTREMES[dtype_name]
    shapes = ((8, 16), (7,), (16, 1))
    initial = _initial(shapes, dtype)
    first = {
        0: (huge * _normal_grad(shapes[0], 0, 0, torch.float64)).to(dtype),
        1: (tiny * _normal_grad(shapes[1], 0, 1, torch.float64)).to(dtype),
    }
    grads = _grads(shapes, dtype, first)
    assert torch.isfinite(grads[0][0]).all() and (grads[0][1] != 0).all()
    _, opt, snapshots, _ = _train(initial, grads, path, preset="paper", eps=0.0)
    reference = _reference(initial, grads, steps=1, preset="paper", eps=0.0)
    rtol = TOLERANCES[dtype_name].one_step
    for block, (_, state) in enumerate(snapshots[0]):
        _assert_close(state["scale"], float(reference.scale[block]), rtol, f"scale of block {block}")
    _assert_close(snapshots[0][0][1]["max_gsnr"], float(reference.max_gsnr), rtol, "M")


# A gradient whose sum of squares exceeds the dtype's largest number in a 2048 x 2048 tensor
# (4.2e6 elements of ~1e16: 4.2e38 > 3.4e38 in float32). The scale used to be NaN.
LARGE_TENSOR_MAGNITUDE = {"float32": 1e16, "float64": 1e152}


@functools.cache
def _large_tensor_case(dtype_name: str) -> tuple[torch.Tensor, float]:
    dtype = DTYPES[dtype_name]
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(2048, 2048, generator=generator, dtype=torch.float64)
    grad = (LARGE_TENSOR_MAGNITUDE[dtype_name] * (1.0 + 0.1 * noise)).to(dtype)
    reference = _reference([torch.zeros(2048, 2048, dtype=dtype)], [[grad]], steps=1)
    return grad, float(reference.scale[0])


@over_dtypes
@over_paths
def test_a_large_tensor_with_an_overflowing_sum_of_squares_gets_a_finite_scale(path: str, dtype_name: str) -> None:
    grad, expected = _large_tensor_case(dtype_name)
    param = torch.nn.Parameter(torch.zeros(2048, 2048, dtype=DTYPES[dtype_name]))
    param.grad = grad
    opt = SGDSaI([param], **PATHS[path])
    opt.step()
    assert np.isfinite(opt.state[param]["scale"])
    _assert_close(opt.state[param]["scale"], expected, TOLERANCES[dtype_name].one_step, "scale")


# --- zero-size tensors -----------------------------------------------------------------------------


@over_dtypes
@over_paths
def test_zero_size_tensor_alone_at_step_one_never_sets_m(path: str, dtype_name: str) -> None:
    dtype = DTYPES[dtype_name]
    shapes = ((0, 4), (8, 16), (7,))
    initial = _initial(shapes, dtype)
    grads = _grads(shapes, dtype, {1: "absent", 2: "absent"})  # block 0's empty gradient alone
    params, opt, snapshots, caught = _train(initial, grads, path, preset="paper")
    assert all(state is None for _, state in snapshots[0]), "nothing initializes at step 1: no state, no M"
    assert all(torch.equal(p, t) for (p, _), t in zip(snapshots[0], initial))
    reference = _reference(initial, grads, steps=2, preset="paper")
    rtol = TOLERANCES[dtype_name].one_step
    _assert_close(snapshots[1][1][1]["max_gsnr"], float(reference.max_gsnr), rtol, "M, set at step 2")
    for block in (1, 2):
        _assert_close(snapshots[1][block][1]["scale"], float(reference.scale[block]), rtol, f"scale of block {block}")
        assert not torch.equal(params[block], initial[block]), f"block {block} must train"
    assert params[0] not in opt.state and params[0].shape == (0, 4)
    reference = _reference(initial, grads, preset="paper")
    for block, (got, want) in enumerate(zip(params, reference.params)):
        assert_normwise_close(
            got, torch.from_numpy(want), TOLERANCES[dtype_name].trajectory, f"params of block {block}"
        )
    assert not caught


# --- the warning -----------------------------------------------------------------------------------

WARNING_CASES = [
    # (desc, names given to the optimizer or None, the fragments naming the two bad tensors)
    ("plain parameters: index and shape", None, ("parameter 1 (shape (7,))", "parameter 2 (shape (4, 4))")),
    (
        "named parameters: index, name and shape",
        ["encoder.weight", "encoder.bias", "head.weight", "head.bias"],
        ("parameter 1 'encoder.bias' (shape (7,))", "parameter 2 'head.weight' (shape (4, 4))"),
    ),
]


@over_dtypes
@over_paths
@pytest.mark.parametrize(("names", "fragments"), [c[1:] for c in WARNING_CASES], ids=[c[0] for c in WARNING_CASES])
def test_non_finite_first_gradient_warns_once_per_tensor_naming_it(
    path: str, dtype_name: str, names: list[str] | None, fragments: tuple[str, str]
) -> None:
    dtype = DTYPES[dtype_name]
    initial = _initial(SHAPES, dtype)
    grads = _grads(SHAPES, dtype, {})
    # Block 1: inf at step 1. Block 2 (first tensor of the second group): NaN at steps 1 and 2.
    grads[0][1] = _bad_grad("inf", SHAPES[1], dtype)
    grads[0][2] = _bad_grad("nan", SHAPES[2], dtype)
    grads[1][2] = _bad_grad("nan", SHAPES[2], dtype)
    params, opt, snapshots, caught = _train(initial, grads, path, groups=[[0, 1], [2, 3]], names=names)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    for fragment, message in zip(fragments, messages):
        assert f"first gradient of {fragment} has a non-finite element" in message
    assert all(w.filename == __file__ for w in caught), "the warning should point at the caller of step()"
    assert snapshots[1][2][1] is None, "still uninitialized after its second NaN gradient"
    assert snapshots[2][2][1] is not None and snapshots[2][1][1] is not None


# --- cost: one transfer per device per step while any tensor is pending, none afterwards ---------------


@over_dtypes
@over_paths
def test_initialization_reads_the_device_once_per_step(
    monkeypatch: pytest.MonkeyPatch, path: str, dtype_name: str
) -> None:
    dtype = DTYPES[dtype_name]
    shapes = ((64, 32), (32,), (4, 4), (), (0, 2))
    params = [torch.nn.Parameter(t) for t in _initial(shapes, dtype)]
    opt = SGDSaI(params, **PATHS[path])
    transfers: list[int] = []
    real_tolist = torch.Tensor.tolist

    def counting_tolist(self: torch.Tensor) -> Any:
        transfers.append(self.numel())
        return real_tolist(self)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a value was read on the host outside the one transfer")

    per_step = []
    # Step 1: a NaN, a zero and two normal first gradients. Steps 2-3: the zero one stays zero
    # (checked every step). Step 4: it gets a nonzero gradient. Steps 5-6: steady.
    plan = {0: {1: "nan", 2: "zero"}, 1: {2: "zero"}, 2: {2: "zero"}}
    with fused_module.set_min_numel(2), warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteGradientWarning)
        if path == "fused":  # compile the kernels before any read is counted
            warm = [torch.nn.Parameter(t) for t in _initial(shapes[:2], dtype)]
            warm_opt = SGDSaI(warm, **PATHS[path])
            for step in range(2):
                for block, p in enumerate(warm):
                    p.grad = _normal_grad(p.shape, step, block, dtype)
                warm_opt.step()
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "tolist", counting_tolist)
            for name in ("item", "__float__", "__int__", "__bool__"):
                patch.setattr(torch.Tensor, name, forbidden)
            for step in range(6):
                for block, p in enumerate(params):
                    kind = plan.get(step, {}).get(block)
                    p.grad = (
                        _normal_grad(p.shape, step, block, dtype) if kind is None else _bad_grad(kind, p.shape, dtype)
                    )
                transfers.clear()
                opt.step()
                per_step.append(len(transfers))
    assert per_step == [1, 1, 1, 1, 0, 0]
    assert all(p in opt.state for p in params[:4]) and params[4] not in opt.state
