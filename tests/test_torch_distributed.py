"""DDP and FSDP2 (DTensor parameters) with gloo, 2 processes on CPU, against one process.

After 10 steps the parameters must equal the single-process run's in float32, and every scale
must be the g-SNR of the whole tensor: a shard-local g-SNR (what an optimizer that only sees
``p.grad.to_local()`` computes) differs by far more than the tolerance, so equality proves it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)

WORKER = Path(__file__).with_name("torch_distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
import torch_distributed_worker as worker  # noqa: E402

# float32, relative to each tensor's largest element: the engines sum gradients over ranks in
# another order than one process (a few units of 2**-24 per element), which moves each step by
# as much; 10 steps stay within the conformance suite's float32 trajectory tolerance.
RTOL = 1e-5


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("distributed") / "results.pt"
    completed = subprocess.run([sys.executable, str(WORKER), str(out)], capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def single_process() -> dict:
    model = worker.make_model()
    opt = worker.train(model, rank=0, world_size=1)
    params = list(model.parameters())
    return {"params": [p.detach() for p in params], "scales": [opt.state[p]["scale"] for p in params]}


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for block, (a, b) in enumerate(zip(got, want)):
        error = float((a - b).abs().max())
        assert error <= RTOL * float(b.abs().max()), f"block {block}: max abs error {error:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_distributed_training_equals_one_process(distributed_results: dict, single_process: dict, engine: str) -> None:
    result = distributed_results[engine]
    _assert_close(result["params"], single_process["params"])
    assert result["scales"] == pytest.approx(single_process["scales"], rel=RTOL)


@pytest.mark.slow
def test_fsdp_scales_are_the_whole_tensor_gsnr_on_every_rank(distributed_results: dict, single_process: dict) -> None:
    fsdp = distributed_results["fsdp"]
    assert fsdp["buffer_is_dtensor"], "momentum buffers must stay DTensors, sharded like their parameters"
    assert fsdp["dcp_round_trip"], "get/set_optimizer_state_dict must restore scales, M and buffers exactly"
    by_rank = distributed_results["fsdp_scales_by_rank"]
    assert by_rank[0] == by_rank[1], "every rank must hold the same scales"
    # Under the default preset ("sgd-sai") a scale is the raw g-SNR G itself.
    assert worker.make_optimizer([torch.nn.Parameter(torch.zeros(1))]).config.normalize == "none"
    differs = [abs(g - w) > 100 * RTOL * w for g, w in zip(fsdp["shard_gsnr"], single_process["scales"])]
    assert any(differs), "the shard-local g-SNR should differ from the whole tensor's here"
