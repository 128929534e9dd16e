"""Torch runners: ``sai_torch.SGDSaI`` on its per-tensor, multi-tensor and fused paths.

Each case runs in its own dtype (float64, float32, bfloat16): the optimizer is built for the case's
groups, the starting snapshot is loaded through ``load_state_dict`` (so every one-step comparison
also checks that a checkpoint restores ``S``, ``M`` and the buffers), gradients are set on ``.grad``
(``None`` for an absent one) and the state after each step is read back from ``optimizer.state``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np

from sai_core import NonFiniteGradientWarning

from .._golden import Case, Snapshot

REQUIRES = ("torch",)


class TorchRunner:
    """Replays cases on ``sai_torch.SGDSaI`` with fixed ``foreach``/``fused`` flags.

    Args:
        name: runner name in reports.
        foreach: the optimizer's ``foreach`` flag.
        fused: the optimizer's ``fused`` flag.
        kernel_min_numel: for the fused runner, the smallest tensor sent through the compiled
            kernel (the golden blocks are tiny; the default threshold would skip them all).
        device: the torch device the case runs on (default ``"cpu"``; the GPU check uses ``"cuda"``).
    """

    def __init__(
        self,
        name: str,
        *,
        foreach: bool | None,
        fused: bool | None,
        kernel_min_numel: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        self.name = name
        self.foreach = foreach
        self.fused = fused
        self.kernel_min_numel = kernel_min_numel
        self.device = device  # where parameters, gradients and buffers live (the GPU check: "cuda")
        self.dtypes = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}

    def not_applicable(self, case: Case) -> str | None:
        if case.dtype not in self.dtypes:
            return f"{self.name} has no {case.dtype} dtype"
        return None

    def _context(self) -> Any:
        if self.kernel_min_numel is None:
            return contextlib.nullcontext()
        from sai_torch._fused import set_min_numel

        return set_min_numel(self.kernel_min_numel)

    def run(self, case: Case, start: Snapshot, first_step: int, num_steps: int) -> list[Snapshot]:
        import torch

        from sai_torch import SGDSaI

        dtype = self.dtypes[case.dtype]
        device = self.device
        params = [
            torch.nn.Parameter(torch.from_numpy(np.array(p, dtype=np.float64)).to(device=device, dtype=dtype))
            for p in start.params
        ]
        groups = [
            {"params": [params[i] for i in group.params], **hyper}
            for group, hyper in zip(case.groups, case.hyper_at(first_step))
        ]
        opt = SGDSaI(groups, preset=case.preset, foreach=self.foreach, fused=self.fused, **case.knobs)
        saved = opt.state_dict()
        for i in range(len(params)):
            entry: dict[str, Any] = {}
            if start.scale[i] is not None:
                entry["scale"] = start.scale[i]
                entry["max_gsnr"] = start.max_gsnr
            if start.momentum_buffer[i] is not None:
                entry["momentum_buffer"] = torch.from_numpy(np.array(start.momentum_buffer[i])).to(
                    device=device, dtype=dtype
                )
            if entry:
                saved["state"][i] = entry
        opt.load_state_dict(saved)
        snapshots = []
        with self._context():
            for step in range(first_step, first_step + num_steps):
                for group, hyper in zip(opt.param_groups, case.hyper_at(step)):
                    group.update(hyper)
                for param, grad in zip(params, case.grads[step]):
                    param.grad = (
                        None if grad is None else torch.from_numpy(np.array(grad)).to(device=device, dtype=dtype)
                    )
                with warnings.catch_warnings():
                    # Non-finite first gradients are part of the cases; their warning is expected.
                    warnings.simplefilter("ignore", NonFiniteGradientWarning)
                    opt.step()
                snapshots.append(_snapshot(opt, params, start.step + step - first_step + 1))
        return snapshots


def _as_numpy(tensor: Any) -> np.ndarray:
    import torch

    return tensor.detach().to(torch.float64).cpu().numpy().copy()


def _snapshot(opt: Any, params: list[Any], step: int) -> Snapshot:
    states = [opt.state.get(p, {}) for p in params]
    max_gsnr = next((s["max_gsnr"] for s in states if "max_gsnr" in s), None)
    return Snapshot(
        params=[_as_numpy(p) for p in params],
        momentum_buffer=[None if "momentum_buffer" not in s else _as_numpy(s["momentum_buffer"]) for s in states],
        scale=[s.get("scale") for s in states],
        max_gsnr=max_gsnr,
        step=step,
    )


def runners() -> list[TorchRunner]:
    return [
        TorchRunner("torch", foreach=False, fused=False),
        TorchRunner("torch-foreach", foreach=True, fused=False),
        # Sizes >= 2 go through the compiled kernel (size-1 blocks take the multi-tensor path).
        TorchRunner("torch-fused", foreach=False, fused=True, kernel_min_numel=2),
    ]
