"""Two gloo processes train one model with ``SGDSaI`` under DDP, then under FSDP2; rank 0 saves.

Run by ``tests/test_torch_distributed.py`` as ``python tests/torch_distributed_worker.py OUT``.
``python tests/torch_distributed_worker.py OUT fsdp1`` instead checks that FSDP1's flattened
parameters are refused (``tests/test_torch_checkpoints_engines.py``).
The model, data and schedule are defined here once and imported by the test, which trains the same
model in one process on the whole batch and compares. Each rank takes half of every batch; both
engines average gradients over ranks, so the gradient equals the single-process one up to
summation order.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
STEPS = 10
LR = 0.05


def make_model() -> torch.nn.Module:
    """Two layers whose second has 5 outputs: FSDP2 shards its rows unevenly (3 + 2)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 8, generator=generator), torch.randn(8, 5, generator=generator)) for _ in range(STEPS)]


def make_optimizer(params) -> torch.optim.Optimizer:  # noqa: ANN001
    from sai_torch import SGDSaI

    return SGDSaI(params, lr=LR)


def train(model: torch.nn.Module, rank: int, world_size: int) -> torch.optim.Optimizer:
    opt = make_optimizer(model.parameters())
    for x, y in batches():
        local_x, local_y = x.chunk(world_size)[rank], y.chunk(world_size)[rank]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(local_x), local_y).backward()
        opt.step()
    return opt


def _ddp(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(make_model())
    opt = train(model, rank, WORLD_SIZE)
    params = list(model.module.parameters())
    return {"params": [p.detach().clone() for p in params], "scales": [opt.state[p]["scale"] for p in params]}


def _fsdp(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from sai_core import gsnr

    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    model = make_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # The g-SNR a shard-local implementation would use, for the test to tell the two apart.
    x, y = batches()[0]
    torch.nn.functional.mse_loss(model(x.chunk(WORLD_SIZE)[rank]), y.chunk(WORLD_SIZE)[rank]).backward()
    shard_gsnr = [float(gsnr(p.grad.to_local().numpy())) for p in model.parameters()]
    model.zero_grad()
    opt = train(model, rank, WORLD_SIZE)
    params = list(model.parameters())
    return {
        "dcp_round_trip": _dcp_round_trip(model, opt),
        "params": [p.full_tensor().detach().clone() for p in params],
        "scales": [opt.state[p]["scale"] for p in params],
        "max_gsnr": opt.state[params[0]]["max_gsnr"],
        "shard_gsnr": shard_gsnr,
        "buffer_is_dtensor": all(type(opt.state[p]["momentum_buffer"]).__name__ == "DTensor" for p in params),
    }


def _dcp_round_trip(model: torch.nn.Module, opt: torch.optim.Optimizer) -> bool:
    """Whether torch's distributed-checkpoint state dict carries every scale, M and buffer exactly."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    saved = get_optimizer_state_dict(model, opt)
    fresh = make_optimizer(model.parameters())
    set_optimizer_state_dict(model, fresh, saved)
    for p in model.parameters():
        before, after = opt.state[p], fresh.state[p]
        if (
            before.keys() != after.keys()
            or before["scale"] != after["scale"]
            or before["max_gsnr"] != after["max_gsnr"]
        ):
            return False
        if not torch.equal(before["momentum_buffer"].to_local(), after["momentum_buffer"].to_local()):
            return False
    return True


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {"ddp": _ddp(rank), "fsdp": _fsdp(rank)}
        gathered = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, {"fsdp_scales": results["fsdp"]["scales"]})
        results["fsdp_scales_by_rank"] = [g["fsdp_scales"] for g in gathered]
        if rank == 0:
            torch.save(results, out)
        # No rank tears gloo down while another is still inside it: tearing down early aborted a
        # rank now and then ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _refusal(make: Callable[[], object]) -> str | None:
    """The message of the error ``make()`` raises (ValueError or RuntimeError), or ``None``."""
    try:
        make()
    except (ValueError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _fsdp1(rank: int) -> dict:
    """FSDP1 (FullyShardedDataParallel) hands SGDSaI flattened tensors: each way must be refused."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    from sai_torch import SGDSaI

    results: dict = {}
    cpu = torch.device("cpu")  # FSDP1 looks for an accelerator unless told the device
    flat = FullyShardedDataParallel(make_model(), device_id=cpu)
    results["flat_param"] = _refusal(lambda: SGDSaI(flat.parameters(), lr=LR))
    orig = FullyShardedDataParallel(make_model(), device_id=cpu, use_orig_params=True)
    results["use_orig_params"] = _refusal(lambda: SGDSaI(orig.parameters(), lr=LR))
    # The optimizer built before wrapping (its tensors were whole then): refused at the first step.
    model = make_model()
    opt = SGDSaI(model.parameters(), lr=LR)
    wrapped = FullyShardedDataParallel(model, device_id=cpu, use_orig_params=True)
    x, y = batches()[0]
    torch.nn.functional.mse_loss(wrapped(x.chunk(WORLD_SIZE)[rank]), y.chunk(WORLD_SIZE)[rank]).backward()
    before = [p.detach().clone() for p in wrapped.parameters()]
    results["wrapped_after_construction"] = _refusal(opt.step)
    results["unchanged_after_refusal"] = len(opt.state) == 0 and all(
        torch.equal(a, b) for a, b in zip(before, wrapped.parameters())
    )
    return results


def _fsdp1_worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        gathered = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, _fsdp1(rank))
        if rank == 0:
            torch.save(gathered, out)
        dist.barrier()  # as in _worker
    finally:
        dist.destroy_process_group()


def main(out: str, mode: str = "supported") -> None:
    """``mode``: "supported" (DDP and FSDP2 training) or "fsdp1" (the refused FSDP1 layouts)."""
    target = {"supported": _worker, "fsdp1": _fsdp1_worker}[mode]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(target, args=(os.path.join(folder, "init"), out), nprocs=WORLD_SIZE)


if __name__ == "__main__":
    main(*sys.argv[1:3])
