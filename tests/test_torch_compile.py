"""``torch.compile`` of a training step that calls ``SGDSaI.step()`` runs and matches eager.

The first step initializes the scales (one host read, a graph break); later steps are traced with
the scales as constants. Inductor may contract multiply-adds differently from eager kernels, so
the comparison is in float32 with the conformance suite's float32 trajectory tolerance.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch._dynamo.utils import counters  # noqa: E402

from sai_torch import SGDSaI  # noqa: E402

RTOL = 1e-5
STEPS = 4


def _make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _train(compiled: bool, options: dict[str, Any]) -> tuple[list[torch.Tensor], list[float], list[int]]:
    model = _make_model()
    options = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in {"lr": 0.1, **options}.items()}
    opt = SGDSaI(model.parameters(), **options)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step = torch.compile(train_step) if compiled else train_step
    generator = torch.Generator().manual_seed(1)
    losses, graphs = [], []
    for _ in range(STEPS):
        x, y = torch.randn(4, 6, generator=generator), torch.randn(4, 3, generator=generator)
        losses.append(float(step(x, y).detach()))
        graphs.append(counters["stats"]["unique_graphs"])
        if isinstance(opt.param_groups[0]["lr"], torch.Tensor):
            opt.param_groups[0]["lr"].mul_(0.5)  # a schedule, in place as torch's schedulers do
    return [p.detach().clone() for p in model.parameters()], losses, graphs


COMPILE_CASES = [
    ("default path", {}),
    ("maximize, momentum 0", {"maximize": True, "momentum": 0.0}),
    # a tensor lr changed between steps recompiles nothing
    ("tensor lr halved every step", {"lr": torch.tensor(0.1)}),
]


@pytest.mark.slow
@pytest.mark.parametrize("options", [case[1] for case in COMPILE_CASES], ids=[case[0] for case in COMPILE_CASES])
def test_compiled_training_step_matches_eager(options: dict[str, Any]) -> None:
    torch._dynamo.reset()
    eager_params, eager_losses, _ = _train(False, options)
    compiled_params, compiled_losses, graphs = _train(True, options)
    # Step 1 (initialization) and step 2 (state now present) compile; later steps reuse them.
    assert graphs[0] > 0 and graphs[-1] == graphs[1], f"graphs compiled after each step: {graphs}"
    assert compiled_losses == pytest.approx(eager_losses, rel=RTOL)
    for block, (a, b) in enumerate(zip(compiled_params, eager_params)):
        error = float((a - b).abs().max())
        assert error <= RTOL * float(b.abs().max()), f"block {block}: max abs error {error:.3g}"
