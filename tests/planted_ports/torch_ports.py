"""Planted torch ports: :class:`PlantedSaI` is clean; each subclass plants one mistake (``MISTAKES``)."""

from __future__ import annotations

import math
import time

import torch

# Every mistake a subclass can plant, and what it does.
MISTAKES: dict[str, str] = {
    "decay_after": "decoupled weight decay applied after the update instead of before it",
    "decay_times_s": "weight decay multiplied by the block's scale S",
    "biased_std": "the biased standard deviation (correction 0)",
    "mean_normalise": "S = G / mean of the first step's g-SNRs (instead of none or the max)",
    "max_per_group": "max-normalised, but one M per parameter group",
    "running_max": "max-normalised, but M raised by every later block (a running max)",
    "maximize_flip": "maximize negates p.grad in place twice on step 1 and once later",
    "zero_sqrt_n": "an all-zero first gradient initializes the block with G = sqrt(n), buffer 0",
    "nonfinite_poisons": "a non-finite first gradient initializes the block (G = nan)",
    "bf16_stats": "the statistic computed in the gradient's dtype (bfloat16 stays bfloat16)",
    "zeros_buffer": "the first momentum buffer (1 - mu) g (a buffer started at zeros)",
    "hang": "step() never returns from its second call on",
}


class PlantedSaI(torch.optim.Optimizer):
    """SGD-SaI (docs/spec.md, contract v2) in plain torch, with mistakes switched on by ``MISTAKES``.

    ``normalize="max"`` is the paper preset (one frozen ``M`` across groups); the max-normalised
    mistakes set it themselves.
    """

    MISTAKES: frozenset[str] = frozenset()
    NORMALIZE = "none"

    def __init__(self, params, lr=1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, *, maximize=False):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eps": eps, "maximize": maximize}
        super().__init__(params, defaults)
        self.max_gsnr: dict[int, float] = {}  # key: the group index under max_per_group, else 0
        self.calls = 0

    def _gsnr(self, grad: torch.Tensor, eps: float) -> float:
        n = grad.numel()
        if n == 1 or bool(grad.max() == grad.min()):
            return math.sqrt(n)
        work = grad if "bf16_stats" in self.MISTAKES else grad.double()
        std = work.std(correction=0 if "biased_std" in self.MISTAKES else 1)
        return float(work.norm() / (std + eps))

    def _informative(self, grad: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(grad).all()) or "nonfinite_poisons" in self.MISTAKES
        nonzero = bool(grad.any()) or "zero_sqrt_n" in self.MISTAKES
        return finite and nonzero

    def _normalise(self, new: list[tuple[dict, torch.Tensor, float, int]]) -> None:
        if not new:
            return
        if self.NORMALIZE == "none" and "mean_normalise" not in self.MISTAKES:
            for state, _, value, _ in new:
                state["scale"] = value
            return
        keys = {g for *_, g in new} if "max_per_group" in self.MISTAKES else {0}
        for key in keys:
            values = [v for _, _, v, g in new if "max_per_group" not in self.MISTAKES or g == key]
            if "mean_normalise" in self.MISTAKES:
                self.max_gsnr.setdefault(key, sum(values) / len(values))
            elif "running_max" in self.MISTAKES:
                self.max_gsnr[key] = max([self.max_gsnr.get(key, 0.0), *values])
            else:
                self.max_gsnr.setdefault(key, max(values))
        for state, _, value, group in new:
            state["scale"] = value / self.max_gsnr[group if "max_per_group" in self.MISTAKES else 0]

    @torch.no_grad()
    def step(self, closure=None):
        self.calls += 1
        if "hang" in self.MISTAKES and self.calls >= 2:
            while True:  # waits for something that never comes
                time.sleep(0.05)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active, new = [], []
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["maximize"]:
                    if "maximize_flip" in self.MISTAKES:
                        p.grad.neg_()
                        if self.calls == 1:
                            p.grad.neg_()
                        grad = p.grad
                    else:
                        grad = -grad
                state = self.state[p]
                if "scale" not in state:
                    if p.numel() == 0 or not self._informative(grad):
                        continue
                    new.append((state, p, self._gsnr(grad, group["eps"]), index))
                active.append((group, p, grad, state))
        self._normalise(new)
        for group, p, grad, state in active:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            if mu == 0:
                direction = grad
            elif "momentum_buffer" not in state:
                first = (1 - mu) * grad if "zeros_buffer" in self.MISTAKES else grad.clone()
                direction = state["momentum_buffer"] = first
            else:
                direction = state["momentum_buffer"].mul_(mu).add_(grad, alpha=1 - mu)
            scale = state["scale"]
            decay = lr * wd * (scale if "decay_times_s" in self.MISTAKES else 1.0)
            # Computed in float32 (float64 for float64) and rounded once when stored.
            value = p.to(torch.promote_types(p.dtype, torch.float32))
            if "decay_after" not in self.MISTAKES:
                value = value * (1 - decay)
            value = value - lr * scale * direction.to(value.dtype)
            if "decay_after" in self.MISTAKES:
                value = value * (1 - decay)
            p.copy_(value)
        return loss


class PaperSaI(PlantedSaI):
    """Clean, preset ``paper``: one frozen M across parameter groups."""

    NORMALIZE = "max"


def _planted(name: str, *mistakes: str, base: type = PlantedSaI) -> type:
    doc = "; ".join(MISTAKES[m] for m in mistakes)
    return type(name, (base,), {"MISTAKES": frozenset(mistakes), "__doc__": f"Planted: {doc}.", "__module__": __name__})


DecayAfterUpdate = _planted("DecayAfterUpdate", "decay_after")
DecayTimesScale = _planted("DecayTimesScale", "decay_times_s")
MeanNormalisedBiasedStd = _planted("MeanNormalisedBiasedStd", "mean_normalise", "biased_std")
MaxPerGroup = _planted("MaxPerGroup", "max_per_group", base=PaperSaI)
RunningMax = _planted("RunningMax", "running_max", base=PaperSaI)
MaximizeFlip = _planted("MaximizeFlip", "maximize_flip")
ZeroGradSqrtN = _planted("ZeroGradSqrtN", "zero_sqrt_n")
NonFinitePoisons = _planted("NonFinitePoisons", "nonfinite_poisons")
Bf16Statistics = _planted("Bf16Statistics", "bf16_stats")
ZerosBuffer = _planted("ZerosBuffer", "zeros_buffer")
BiasedStd = _planted("BiasedStd", "biased_std")
HangsAtStep2 = _planted("HangsAtStep2", "hang")
