"""Checkpoints of the published ports and of other optimizers; engines that flatten parameters.

A checkpoint written by ``pytorch_optimizer.SGDSaI`` 4.x or ``sgd_sai.SGD_sai`` 1.0.3 loads into
the matching preset with the port's stored g-SNR kept bit for bit, and training resumed from it
equals the port's own uninterrupted training (float64). Everything else that cannot be kept
exactly is refused with a ``ValueError`` that says what the checkpoint is, and loads nothing.
FSDP1 (``FlatParameter`` and ``use_orig_params=True``) and DeepSpeed ZeRO are refused with an
error naming FSDP2 (``fully_shard``) as the supported path.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
sgd_sai = pytest.importorskip("sgd_sai")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

from sai_torch import SGDSaI  # noqa: E402

# float64, relative to each tensor's largest element: the port's last 5 steps and SGDSaI's compute
# the same update in another order (the port's (m * gsnr) * -lr and lerp against SGDSaI's
# kernels), a few units of 2**-53; measured 1.3e-16. The g-SNRs and buffers carried over are
# compared bit for bit.
RTOL = 1e-12
STEPS = 10
RESUME_AT = 5


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 6, generator=generator, dtype=torch.float64),
            torch.randn(8, 4, generator=generator, dtype=torch.float64),
        )
        for _ in range(STEPS)
    ]


def _run(model: torch.nn.Module, opt: Any, batches: list) -> None:
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        # sgd_sai prints a banner at its first step (and again after a resume).
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()


def _saved(state_dict: dict) -> dict:
    """``state_dict`` after a trip through ``torch.save`` / ``torch.load``, as a real checkpoint."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for block, (a, b) in enumerate(zip(got, want)):
        error = float((a - b).abs().max())
        assert error <= RTOL * float(b.abs().max()), f"block {block}: max abs error {error:.3g}"


# --- a port's checkpoint resumes exactly -----------------------------------------------------------

PORT_RESUME_CASES = [
    # (desc, port factory, preset, hyperparameters, SGDSaI flags the checkpoint does not record)
    ("pytorch-optimizer 4, foreach", pytorch_optimizer.SGDSaI, "pytorch-optimizer-4", {"lr": 1e-2}, {}),
    (
        "pytorch-optimizer 4, per-tensor loop, momentum 0.5, weight decay 0.1",
        lambda params, **kw: pytorch_optimizer.SGDSaI(params, foreach=False, **kw),
        "pytorch-optimizer-4",
        {"lr": 1e-2, "momentum": 0.5, "weight_decay": 0.1},
        {},
    ),
    (
        "pytorch-optimizer 4, momentum 0",
        pytorch_optimizer.SGDSaI,
        "pytorch-optimizer-4",
        {"lr": 1e-2, "momentum": 0.0},
        {},
    ),
    # pytorch-optimizer keeps maximize as an attribute, not in its state dict: the loading
    # optimizer's own flag is kept.
    (
        "pytorch-optimizer 4, maximize",
        pytorch_optimizer.SGDSaI,
        "pytorch-optimizer-4",
        {"lr": 1e-3, "maximize": True},
        {"maximize": True},
    ),
    ("sgd-sai 1.0.3", sgd_sai.SGD_sai, "sgd-sai-1.0.3", {"lr": 1e-2}, {}),
    ("sgd-sai 1.0.3, momentum 0.5", sgd_sai.SGD_sai, "sgd-sai-1.0.3", {"lr": 1e-2, "momentum": 0.5}, {}),
]


@pytest.mark.parametrize(
    ("make_port", "preset", "hyper", "flags"), [c[1:] for c in PORT_RESUME_CASES], ids=[c[0] for c in PORT_RESUME_CASES]
)
def test_a_ports_checkpoint_resumes_as_the_ports_uninterrupted_training(
    make_port: Callable[..., Any], preset: str, hyper: dict, flags: dict
) -> None:
    batches = _batches()
    uninterrupted = _mlp()
    _run(uninterrupted, make_port(uninterrupted.parameters(), **hyper), batches)

    model = _mlp()
    port = make_port(model.parameters(), **hyper)
    _run(model, port, batches[:RESUME_AT])
    checkpoint = _saved({"model": model.state_dict(), "optimizer": port.state_dict()})
    resumed = _mlp()
    resumed.load_state_dict(checkpoint["model"])
    # Built with other hyperparameters on purpose: the checkpoint's lr, momentum, ... are loaded.
    opt = SGDSaI(resumed.parameters(), preset=preset, **flags)
    opt.load_state_dict(checkpoint["optimizer"])

    saved_state = checkpoint["optimizer"]["state"]
    gsnrs = [float(saved_state[i]["gsnr"]) for i in range(4)]
    for index, p in enumerate(resumed.parameters()):
        state = opt.state[p]
        assert state["scale"] == gsnrs[index], "the port's g-SNR must be kept bit for bit"
        assert state["max_gsnr"] == max(gsnrs)
        if hyper.get("momentum", 0.9) == 0.0:
            assert "momentum_buffer" not in state
        else:
            assert torch.equal(state["momentum_buffer"], saved_state[index]["momentum_buffer"])
    for key, value in hyper.items():
        assert opt.param_groups[0][key] == value
    assert opt.state_dict()["sai_config"]["preset"] == preset

    _run(resumed, opt, batches[RESUME_AT:])
    _assert_close(_params(resumed), _params(uninterrupted))
    # The scales stayed the checkpoint's: never recomputed from a gradient after the resume.
    assert [opt.state[p]["scale"] for p in resumed.parameters()] == gsnrs


def test_sgd_sai_recomputes_its_gsnr_after_resume_and_sgdsai_keeps_the_checkpoints() -> None:
    # SGD_sai 1.0.3 records "g-SNR computed" in a Python attribute, not in its state dict: loaded
    # into a fresh SGD_sai, its g-SNR is recomputed from the first gradient after the resume
    # (PORTS.md), so the port's own resumed run leaves its uninterrupted one. Its checkpoint says
    # the g-SNR of step 1: SGDSaI keeps that one and follows the uninterrupted run.
    batches = _batches()
    uninterrupted = _mlp()
    _run(uninterrupted, sgd_sai.SGD_sai(uninterrupted.parameters()), batches)
    model = _mlp()
    port = sgd_sai.SGD_sai(model.parameters())
    _run(model, port, batches[:RESUME_AT])
    checkpoint = _saved({"model": model.state_dict(), "optimizer": port.state_dict()})

    def resume(make_opt: Callable[..., Any]) -> tuple[torch.nn.Module, Any]:
        resumed = _mlp()
        resumed.load_state_dict(checkpoint["model"])
        opt = make_opt(resumed.parameters())
        opt.load_state_dict(copy.deepcopy(checkpoint["optimizer"]))
        _run(resumed, opt, batches[RESUME_AT:])
        return resumed, opt

    port_resumed, port_opt = resume(sgd_sai.SGD_sai)
    ours, opt = resume(lambda p: SGDSaI(p, preset="sgd-sai-1.0.3"))
    saved_gsnr = [float(checkpoint["optimizer"]["state"][i]["gsnr"]) for i in range(4)]
    assert [float(port_opt.state[p]["gsnr"]) for p in port_resumed.parameters()] != saved_gsnr
    assert [opt.state[p]["scale"] for p in ours.parameters()] == saved_gsnr
    _assert_close(_params(ours), _params(uninterrupted))
    difference = max(float((a - b).abs().max()) for a, b in zip(_params(port_resumed), _params(uninterrupted)))
    assert difference > 1e-6


def test_a_port_checkpoint_saved_before_any_step_loads_its_hyperparameters() -> None:
    model = _mlp()
    saved = pytorch_optimizer.SGDSaI(model.parameters(), lr=0.25, momentum=0.5).state_dict()
    opt = SGDSaI(model.parameters(), preset="pytorch-optimizer-4")
    opt.load_state_dict(saved)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]) == (0.25, 0.5)
    assert "weight_decouple" not in opt.param_groups[0] and len(opt.state) == 0


# --- refused checkpoints ---------------------------------------------------------------------------


def _port_checkpoint(make_port: Callable[..., Any], **hyper: Any) -> dict:
    model = _mlp()
    port = make_port(model.parameters(), **hyper)
    _run(model, port, _batches()[:2])
    return _saved(port.state_dict())


def _foreign_checkpoint(optimizer_class: type, **hyper: Any) -> dict:
    model = _mlp()
    opt = optimizer_class(model.parameters(), **hyper)
    _run(model, opt, _batches()[:2])
    return _saved(opt.state_dict())


def _altered(make: Callable[[], dict], alter: Callable[[dict], Any]) -> Callable[[], dict]:
    def build() -> dict:
        saved = make()
        alter(saved)
        return saved

    return build


def _nan_gsnr(saved: dict) -> None:
    saved["state"][1]["gsnr"] = torch.tensor(math.nan, dtype=torch.float64)


REFUSED_CASES = [
    # (desc, checkpoint, preset and knobs of the loading optimizer, message fragments)
    (
        "pytorch-optimizer checkpoint into the default preset",
        lambda: _port_checkpoint(pytorch_optimizer.SGDSaI),
        {},
        ["checkpoint of pytorch_optimizer.SGDSaI", "preset='pytorch-optimizer-4'", "vector_rule='ratio'"],
    ),
    (
        "pytorch-optimizer checkpoint into its preset with a knob overridden",
        lambda: _port_checkpoint(pytorch_optimizer.SGDSaI),
        {"preset": "pytorch-optimizer-4", "zero_gradient": "defer"},
        ["checkpoint of pytorch_optimizer.SGDSaI", "zero_gradient='defer' (the port: 'degenerate')"],
    ),
    (
        "sgd-sai checkpoint into the pytorch-optimizer preset",
        lambda: _port_checkpoint(sgd_sai.SGD_sai),
        {"preset": "pytorch-optimizer-4"},
        ["checkpoint of sgd_sai.SGD_sai", "preset='sgd-sai-1.0.3'"],
    ),
    (
        "sgd-sai checkpoint into the paper preset",
        lambda: _port_checkpoint(sgd_sai.SGD_sai),
        {"preset": "paper"},
        ["checkpoint of sgd_sai.SGD_sai", "normalize='max' (the port: 'none')"],
    ),
    (
        "pytorch-optimizer with coupled weight decay",
        lambda: _port_checkpoint(pytorch_optimizer.SGDSaI, weight_decouple=False),
        {"preset": "pytorch-optimizer-4"},
        ["weight_decouple=False", "coupled L2 weight decay"],
    ),
    (
        "pytorch-optimizer checkpoint missing one tensor's g-SNR",
        _altered(lambda: _port_checkpoint(pytorch_optimizer.SGDSaI), lambda s: s["state"][2].pop("gsnr")),
        {"preset": "pytorch-optimizer-4"},
        ["parameter 2 of this pytorch_optimizer.SGDSaI", "momentum buffer but no 'gsnr'"],
    ),
    (
        "sgd-sai checkpoint with a NaN g-SNR",
        _altered(lambda: _port_checkpoint(sgd_sai.SGD_sai), _nan_gsnr),
        {"preset": "sgd-sai-1.0.3"},
        ["parameter 1's stored g-SNR is nan"],
    ),
    (
        "torch.optim.AdamW",
        lambda: _foreign_checkpoint(torch.optim.AdamW),
        {},
        ["not an SGDSaI checkpoint", "['exp_avg', 'exp_avg_sq', 'step']", "Adam-family"],
    ),
    (
        "torch.optim.AdamW before any step",
        lambda: torch.optim.AdamW(_mlp().parameters()).state_dict(),
        {},
        ["not an SGDSaI checkpoint", "no ['momentum']"],
    ),
    (
        "torch.optim.SGD with momentum",
        lambda: _foreign_checkpoint(torch.optim.SGD, lr=0.1, momentum=0.9),
        {},
        ["not an SGDSaI checkpoint", "no ['eps']", "torch.optim.SGD's"],
    ),
    (
        "another SGD-SaI implementation",
        _altered(lambda: _port_checkpoint(sgd_sai.SGD_sai), lambda s: s["param_groups"][0].update(maximize=False)),
        {"preset": "sgd-sai-1.0.3"},
        ["other than the two published ports"],
    ),
]


@pytest.mark.parametrize(
    ("make_checkpoint", "options", "fragments"), [c[1:] for c in REFUSED_CASES], ids=[c[0] for c in REFUSED_CASES]
)
def test_a_checkpoint_that_cannot_be_kept_exactly_is_refused_and_loads_nothing(
    make_checkpoint: Callable[[], dict], options: dict, fragments: list[str]
) -> None:
    model = _mlp()
    target = SGDSaI(model.parameters(), lr=0.5, **options)
    _run(model, target, _batches()[:1])
    before = copy.deepcopy(target.state_dict())
    saved = make_checkpoint()
    with pytest.raises(ValueError, match="Invalid state_dict") as raised:
        target.load_state_dict(saved)
    for fragment in fragments:
        assert fragment in str(raised.value)
    assert "Nothing was loaded" in str(raised.value)
    after = target.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for index, entry in before["state"].items():
        assert after["state"][index]["scale"] == entry["scale"]
        assert torch.equal(after["state"][index]["momentum_buffer"], entry["momentum_buffer"])


def test_loading_never_modifies_the_callers_state_dict() -> None:
    saved = _port_checkpoint(pytorch_optimizer.SGDSaI)
    reference = copy.deepcopy(saved)
    SGDSaI(_mlp().parameters(), preset="pytorch-optimizer-4").load_state_dict(saved)
    assert saved.keys() == reference.keys() and saved["param_groups"] == reference["param_groups"]
    for index, entry in reference["state"].items():
        assert saved["state"][index].keys() == entry.keys()


def test_own_checkpoint_without_sai_config_holding_a_buffer_but_no_scale_is_refused() -> None:
    # The sai_config case is pinned in test_torch_optimizer.py; without "sai_config" (an old or a
    # stripped checkpoint) the check must hold too, not hand the tensor a recomputed scale.
    model = _mlp()
    opt = SGDSaI(model.parameters())
    _run(model, opt, _batches()[:1])
    saved = opt.state_dict()
    del saved["sai_config"]
    del saved["state"][0]["scale"], saved["state"][0]["max_gsnr"]
    with pytest.raises(ValueError, match="parameter 0 has a momentum buffer but no scale"):
        SGDSaI(_mlp().parameters()).load_state_dict(saved)


# --- engines that flatten parameters ---------------------------------------------------------------

WORKER = Path(__file__).with_name("torch_distributed_worker.py")


@pytest.fixture(scope="module")
def fsdp1_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = tmp_path_factory.mktemp("fsdp1") / "results.pt"
    completed = subprocess.run(
        [sys.executable, str(WORKER), str(out), "fsdp1"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "error", "engine"),
    [
        ("flat_param", "ValueError", "FSDP1 FlatParameter"),
        ("use_orig_params", "ValueError", "FSDP1 with use_orig_params=True"),
        ("wrapped_after_construction", "RuntimeError", "FSDP1 with use_orig_params=True"),
    ],
)
def test_fsdp1_is_refused_naming_fsdp2(fsdp1_results: list[dict], case: str, error: str, engine: str) -> None:
    # Two gloo processes on CPU wrap the model in FullyShardedDataParallel; every rank must refuse.
    for rank, result in enumerate(fsdp1_results):
        message = result[case]
        assert message is not None, f"rank {rank}: {case} was accepted"
        assert message.startswith(error) and engine in message, message
        assert "torch.distributed.fsdp.fully_shard" in message
        assert result["unchanged_after_refusal"], "a refused step must change no parameter and no state"


def _deepspeed_stage3_param(shape: tuple[int, ...]) -> torch.nn.Parameter:
    """Stands in for a DeepSpeed ZeRO stage 3 partitioned parameter (DeepSpeed is not installed).

    ``deepspeed.zero.Init`` / stage 3 give every parameter they partition these attributes (its
    id, its full element count and shape, its availability status, its local partition); the data
    the optimizer would see is the partition, not the tensor.
    """
    param = torch.nn.Parameter(torch.zeros(0))
    param.ds_id = 0  # type: ignore[attr-defined]
    param.ds_numel = math.prod(shape)  # type: ignore[attr-defined]
    param.ds_shape = torch.Size(shape)  # type: ignore[attr-defined]
    param.ds_status = "NOT_AVAILABLE"  # type: ignore[attr-defined]  # a ZeroParamStatus there
    param.ds_tensor = torch.zeros(math.prod(shape) // 2)  # type: ignore[attr-defined]
    return param


def test_deepspeed_zero3_partitions_are_refused_at_construction_and_in_add_param_group() -> None:
    whole = torch.nn.Parameter(torch.ones(4, 4))
    with pytest.raises(ValueError, match="DeepSpeed ZeRO stage 3 partition .*ds_id") as raised:
        SGDSaI([whole, _deepspeed_stage3_param((4, 4))])
    assert "torch.distributed.fsdp.fully_shard" in str(raised.value)
    opt = SGDSaI([whole])
    with pytest.raises(ValueError, match="DeepSpeed ZeRO stage 3"):
        opt.add_param_group({"params": [_deepspeed_stage3_param((2, 3))]})
    assert len(opt.param_groups) == 1


def test_a_parameter_partitioned_after_construction_is_refused_at_its_first_step() -> None:
    params = [torch.nn.Parameter(torch.ones(3, 3)), torch.nn.Parameter(torch.ones(4))]
    opt = SGDSaI(params)
    params[1].ds_id = 7  # type: ignore[attr-defined]  # stands in for DeepSpeed partitioning it later
    for p in params:
        p.grad = torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"parameter 1 \(shape \(4,\)\).*DeepSpeed ZeRO stage 3"):
        opt.step()
    assert len(opt.state) == 0 and all(torch.equal(a, b) for a, b in zip(params, before))


def test_parameters_swapped_into_a_group_as_deepspeed_zero_1_and_2_do_are_refused() -> None:
    # DeepSpeed ZeRO stages 1 and 2 (not installed) mark nothing: they assign one flat fp32
    # partition of all the group's tensors to param_group["params"]. This does the same.
    model = _mlp()
    opt = SGDSaI(model.parameters())
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in model.parameters()])[:60].clone())
    opt.param_groups[0]["params"] = [flat]
    flat.grad = torch.randn_like(flat)
    with pytest.raises(RuntimeError, match="without going through SGDSaI.*DeepSpeed ZeRO stages 1 and 2"):
        opt.step()
    assert len(opt.state) == 0


def test_tensors_added_normally_and_copies_of_the_optimizer_still_step() -> None:
    model = _mlp()
    opt = SGDSaI(model.parameters())
    extra = torch.nn.Parameter(torch.ones(2, 2))
    opt.add_param_group({"params": [extra]})
    _run(model, opt, _batches()[:1])
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        for group in clone.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        clone.step()  # the extra tensor initializes now, in the copy
        assert len(clone.state) == 5
