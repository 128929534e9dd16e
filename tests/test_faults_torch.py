"""Bad input to ``sai_torch.SGDSaI``: a clear error, and nothing changed, on every implementation path.

Each fault is one row of a table (what is wrong, how it is set up, the exception and a fragment of
its message) and runs through the three paths (``foreach=False``, ``foreach=True``,
``fused=True``). A fault at ``step()`` is set up on an optimizer that has already stepped (buffers
and scales exist) and that holds a tensor still waiting for its first gradient (so a step that
initialized before checking would write a scale); after the raise, every parameter is compared bit
for bit and ``opt.state_dict()`` entry for entry with a snapshot taken just before the step.

Also here: meta tensors (refused at initialization, shape-only steps once their scale is known)
and low-precision rounding (buffer and parameter rounded once each, the parameter updated from the
stored buffer) on every path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import sai_torch._fused as fused_module  # noqa: E402
from sai_torch import SGDSaI  # noqa: E402

PATHS = {
    "foreach=False": {"foreach": False},
    "foreach=True": {"foreach": True},
    "fused=True": {"fused": True},
}


def _params() -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(16, 16, generator=generator)),  # stepped before the fault
        torch.nn.Parameter(torch.randn(8, generator=generator)),  # first gradient at the faulty step
    ]


def _grads(params: list[torch.Tensor], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)


def _stepped_optimizer(path: dict[str, Any]) -> tuple[SGDSaI, list[torch.nn.Parameter]]:
    """An optimizer after one step of the first tensor only; both tensors have gradients now."""
    params = _params()
    opt = SGDSaI([{"params": params[:1]}, {"params": params[1:], "lr": 0.01}], **path)
    _grads(params[:1], seed=1)
    opt.step()
    _grads(params, seed=2)
    return opt, params


def _sneak_in(opt: SGDSaI, tensor: torch.Tensor, grad: torch.Tensor) -> None:
    """Puts a tensor into the last group by hand, past ``add_param_group``'s checks (as code that edits
    ``param_groups`` directly does), with a gradient of any dtype."""
    tensor.grad_dtype = None  # torch would otherwise refuse a gradient of another dtype
    tensor.grad = grad
    opt.param_groups[-1]["params"].append(tensor)


def _load_foreign_groups(opt: SGDSaI) -> None:
    """Loads a state dict whose second group lacks ``eps`` (written by another optimizer)."""
    state = opt.state_dict()
    del state["param_groups"][1]["eps"]
    opt.load_state_dict(state)


def _set(key: str, value: Any, group: int = 0) -> Callable[[SGDSaI], None]:
    def setup(opt: SGDSaI) -> None:
        opt.param_groups[group][key] = value

    return setup


def _delete(key: str, group: int = 0) -> Callable[[SGDSaI], None]:
    def setup(opt: SGDSaI) -> None:
        del opt.param_groups[group][key]

    return setup


STEP_FAULTS = [
    # (desc, setup(opt), exception, message fragment)
    ("eps set to None between steps", _set("eps", None), ValueError, "Invalid eps: None"),
    ("lr set to None by a schedule", _set("lr", None), ValueError, "Invalid lr: None"),
    ("momentum set to None", _set("momentum", None), ValueError, "Invalid momentum: None"),
    (
        "weight_decay set to None (second group)",
        _set("weight_decay", None, 1),
        ValueError,
        "Invalid weight_decay: None",
    ),
    ("lr set to nan by a schedule", _set("lr", float("nan")), ValueError, "Invalid lr: nan"),
    ("momentum set to 1", _set("momentum", 1.0), ValueError, "Invalid momentum: 1.0"),
    ("maximize set to None", _set("maximize", None), ValueError, "Invalid maximize: None"),
    ("momentum key deleted", _delete("momentum"), ValueError, "Invalid param_groups[0]: no value for 'momentum'"),
    ("lr key deleted (second group)", _delete("lr", 1), ValueError, "Invalid param_groups[1]: no value for 'lr'"),
    ("foreign param_groups loaded (no eps)", _load_foreign_groups, ValueError, "param_groups[1]: no value for 'eps'"),
    (
        "integer gradient",
        lambda opt: _sneak_in(opt, torch.zeros(3), torch.ones(3, dtype=torch.int64)),
        RuntimeError,
        "parameter 2 (shape (3,)) has a torch.int64 gradient",
    ),
    (
        "bool gradient",
        lambda opt: _sneak_in(opt, torch.zeros(3), torch.ones(3, dtype=torch.bool)),
        RuntimeError,
        "parameter 2 (shape (3,)) has a torch.bool gradient",
    ),
    (
        "complex gradient",
        lambda opt: _sneak_in(opt, torch.zeros(3), torch.ones(3, dtype=torch.complex64)),
        RuntimeError,
        "complex gradients (parameter 2 (shape (3,)))",
    ),
    (
        "sparse gradient",
        lambda opt: _sneak_in(opt, torch.zeros(3), torch.ones(3).to_sparse()),
        RuntimeError,
        "sparse gradients (parameter 2 (shape (3,)))",
    ),
    (
        # foreach=False used to truncate the update silently ([0..5] became [0, 0, 0, 0, 1, 1])
        "integer parameter with a float gradient",
        lambda opt: _sneak_in(opt, torch.arange(6), torch.full((6,), 0.5)),
        RuntimeError,
        "parameter 2 (shape (6,)) has dtype torch.int64",
    ),
    (
        "meta parameter at its first step",
        lambda opt: _sneak_in(opt, torch.empty(4, 4, device="meta"), torch.empty(4, 4, device="meta")),
        RuntimeError,
        "cannot initialize parameter 2 (shape (4, 4)) on the meta device",
    ),
]


def _assert_same(got: Any, want: Any, where: str) -> None:
    """Equal to the bit: tensors by ``torch.equal`` (meta tensors by shape and dtype), the rest by ``==``."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape, where
        assert got.device == want.device, where
        if want.device.type != "meta":
            assert torch.equal(got, want), f"{where}: values changed"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    else:
        # nan == nan for the snapshot of a group holding a nan lr
        assert got == want or (got != got and want != want), f"{where}: {got!r} != {want!r}"


def _snapshot(opt: SGDSaI) -> tuple[list[torch.Tensor], dict[str, Any]]:
    params = [p.detach().clone() for group in opt.param_groups for p in group["params"]]
    return params, copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(
    ("setup", "error", "fragment"),
    [case[1:] for case in STEP_FAULTS],
    ids=[case[0] for case in STEP_FAULTS],
)
def test_a_step_that_raises_names_the_fault_and_changes_nothing(path: str, setup, error, fragment: str) -> None:
    opt, _ = _stepped_optimizer(PATHS[path])
    setup(opt)
    params_before, state_before = _snapshot(opt)
    # set_min_numel: the fused path would send the stepped tensor through its kernel
    with fused_module.set_min_numel(2), pytest.raises(error) as raised:
        opt.step()
    assert fragment in str(raised.value), f"{fragment!r} not in {str(raised.value)!r}"
    params_after, state_after = _snapshot(opt)
    _assert_same(params_after, params_before, "params")
    _assert_same(state_after, state_before, "state_dict")


CONSTRUCTION_FAULTS = [
    # (desc, where: "constructor" or "add_param_group", arguments, exception, message fragment)
    ("lr None", "constructor", {"lr": None}, ValueError, "Invalid lr: None"),
    ("momentum None", "constructor", {"momentum": None}, ValueError, "Invalid momentum: None"),
    ("weight_decay None", "constructor", {"weight_decay": None}, ValueError, "Invalid weight_decay: None"),
    ("eps None", "constructor", {"eps": None}, ValueError, "Invalid eps: None"),
    ("lr None", "add_param_group", {"lr": None}, ValueError, "Invalid lr: None"),
    ("momentum None", "add_param_group", {"momentum": None}, ValueError, "Invalid momentum: None"),
    ("weight_decay None", "add_param_group", {"weight_decay": None}, ValueError, "Invalid weight_decay: None"),
    ("eps None", "add_param_group", {"eps": None}, ValueError, "Invalid eps: None"),
    (
        "integer parameter",
        "constructor",
        {"params": [torch.arange(6)]},
        ValueError,
        "parameter 0 (shape (6,)) has dtype torch.int64",
    ),
    (
        "bool parameter",
        "add_param_group",
        {"params": [torch.zeros(3, dtype=torch.bool)]},
        ValueError,
        "parameter 2 (shape (3,)) has dtype torch.bool",
    ),
    (
        "int8 parameter among float ones",
        "add_param_group",
        {"params": [torch.zeros(2), torch.zeros(5, dtype=torch.int8)]},
        ValueError,
        "parameter 3 (shape (5,)) has dtype torch.int8",
    ),
]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(
    ("where", "arguments", "error", "fragment"),
    [case[1:] for case in CONSTRUCTION_FAULTS],
    ids=[f"{case[0]} ({case[1]})" for case in CONSTRUCTION_FAULTS],
)
def test_bad_arguments_are_refused_naming_them(path: str, where: str, arguments, error, fragment: str) -> None:
    arguments = dict(arguments)
    if where == "constructor":
        with pytest.raises(error) as raised:
            SGDSaI(arguments.pop("params", _params()), **arguments, **PATHS[path])
    else:
        opt, _ = _stepped_optimizer(PATHS[path])
        params_before, state_before = _snapshot(opt)
        with pytest.raises(error) as raised:
            opt.add_param_group({"params": arguments.pop("params", [torch.nn.Parameter(torch.ones(3))]), **arguments})
        params_after, state_after = _snapshot(opt)
        _assert_same(params_after, params_before, "params")
        _assert_same(state_after, state_before, "state_dict (the group must not be added)")
    assert fragment in str(raised.value), f"{fragment!r} not in {str(raised.value)!r}"


# --- meta tensors: refused at initialization (above), shape-only once the scale is known ----------


@pytest.mark.parametrize("path", list(PATHS))
def test_meta_tensors_with_a_known_scale_step_shape_only(path: str) -> None:
    # A checkpoint's state loaded onto meta parameters (deferred initialization): steps run as
    # torch.optim's do on meta, on every path (the fused path sends meta tensors to the
    # multi-tensor one: nothing compiles), and keep the loaded scales.
    real = [torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(5))]
    source = SGDSaI(real, **PATHS[path])
    _grads(real, seed=3)
    source.step()
    meta = [torch.nn.Parameter(torch.empty_like(p, device="meta")) for p in real]
    opt = SGDSaI(meta, **PATHS[path])
    opt.load_state_dict(source.state_dict())
    with fused_module.set_min_numel(2):
        for _ in range(2):
            for p in meta:
                p.grad = torch.empty_like(p)
            opt.step()
    for p, q in zip(meta, real):
        assert p.is_meta and p.shape == q.shape
        assert opt.state[p]["momentum_buffer"].is_meta
        assert opt.state[p]["momentum_buffer"].shape == q.shape
        assert opt.state[p]["scale"] == source.state[q]["scale"]


# --- low precision: float32 arithmetic, buffer and parameter rounded once each ------------------

# Shapes the fused kernel takes with MIN_NUMEL lowered to KERNEL_NUMEL: whole (rows, 64) blocks
# plus a partial last row (65 * 67 = 68 rows and 3 elements), and one tensor left to the
# multi-tensor path.
PRECISION_SHAPES = ((65, 67), (40, 64), (50,))
KERNEL_NUMEL = 1024
PRECISION_STEPS = 5


def _train(path: dict[str, Any], dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator).to(dtype)) for s in PRECISION_SHAPES]
    opt = SGDSaI(params, lr=0.01, weight_decay=0.1, **path)
    with fused_module.set_min_numel(KERNEL_NUMEL):
        for step in range(PRECISION_STEPS):
            for i, p in enumerate(params):
                p.grad = (torch.randn(p.shape, generator=generator) + 0.1 * (i + step)).to(dtype)
            opt.step()
    return [p.detach().clone() for p in params], [opt.state[p]["momentum_buffer"].clone() for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("path", ["foreach=True", "fused=True"])
def test_paths_agree_with_the_per_tensor_path_bit_for_bit(path: str, dtype: torch.dtype) -> None:
    # Every path rounds where sai_core.update_momentum / update_param round (one rounding per
    # product and per sum, in float32 for the low-precision dtypes, stored once): equal to the bit.
    want_params, want_buffers = _train(PATHS["foreach=False"], dtype)
    got_params, got_buffers = _train(PATHS[path], dtype)
    for block, (got, want) in enumerate(zip(got_params + got_buffers, want_params + want_buffers)):
        assert got.dtype == dtype
        differ = int((got != want).sum())
        assert differ == 0, f"{path}, {dtype}, tensor {block}: {differ} of {got.numel()} elements differ"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fused_kernel_updates_the_parameter_from_the_stored_buffer(dtype: torch.dtype) -> None:
    # The compiled kernel must do what its eager form does, to the bit: round the new buffer to
    # its dtype and update the parameter from that rounded value (as sai_core.update_param reads
    # the stored buffer). Inductor used to reuse the unrounded float32 buffer.
    generator = torch.Generator().manual_seed(4)
    rows = 40
    param, grad, buffer = (torch.randn(rows, fused_module.ROW, generator=generator).to(dtype) for _ in range(3))
    coefficients = torch.tensor([[0.9, 0.1, 1.0 - 1e-3, 0.37]])
    # The reference's rule, spelled out in float32: the buffer rounded when stored, theta
    # updated from the stored buffer, rounded once.
    mu, weight, decay, step = coefficients[0]
    stored = (buffer.float() * mu + grad.float() * weight).to(dtype)
    expected = (param.float() * decay - step * stored.float()).to(dtype)
    eager_param, eager_buffer = param.clone(), buffer.clone()
    fused_module._sai_kernel(eager_param, grad, eager_buffer, coefficients[0])
    assert torch.equal(eager_buffer, stored) and torch.equal(eager_param, expected), "eager kernel"
    fused_module._batch_kernel(1)([param], [grad], [buffer], coefficients)
    assert torch.equal(buffer, stored), "compiled kernel: buffer"
    assert torch.equal(param, expected), "compiled kernel: parameter not updated from the stored buffer"
