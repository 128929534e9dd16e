"""The published ports, installed from PyPI, against ``SGDSaI`` with the preset that reproduces each.

``preset="sgd-sai-1.0.3"`` must follow ``sgd_sai.SGD_sai`` 1.0.3 (the authors' release) and
``preset="pytorch-optimizer-4"`` must follow ``pytorch_optimizer.SGDSaI`` 4.1.0, step for step for
20 steps in float64, on an MLP and on a small transformer block. Where a port crashes or diverges
(``../shared/PORTS.md`` lists how), the test asserts that documented behaviour instead, and what
``SGDSaI`` does there.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
sgd_sai = pytest.importorskip("sgd_sai")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

from sai_torch import SGDSaI  # noqa: E402

# float64, relative to each tensor's largest element: the port and SGDSaI compute the same
# expressions in different orders (torch.std against sai_core's two-pass deviation, lerp against
# mul/add), a few units of 2**-53 per step; 20 steps of a small network measured <= 5e-16.
RTOL = 1e-12
STEPS = 20


def test_the_pinned_port_versions_are_installed() -> None:
    # The presets reproduce these releases; other versions behave differently (PORTS.md).
    assert importlib.metadata.version("sgd_sai") == "1.0.3"
    assert importlib.metadata.version("pytorch_optimizer").startswith("4.")


def _mlp(outputs: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, outputs)).double()


def _transformer_block() -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return layer.double()


def _batches(model: torch.nn.Module, steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    if isinstance(model, torch.nn.TransformerEncoderLayer):
        shape_in = shape_out = (4, 5, 16)
    else:
        shape_in, shape_out = (8, 6), (8, model[-1].out_features)
    return [
        (
            torch.randn(shape_in, generator=generator, dtype=torch.float64),
            torch.randn(shape_out, generator=generator, dtype=torch.float64),
        )
        for _ in range(steps)
    ]


def _quietly(fn: Callable[[], Any]) -> Any:
    # sgd_sai prints a banner at its first step; torch warns about std() of one element.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _train(make_model: Callable[[], torch.nn.Module], make_opt: Callable[..., Any], steps: int = STEPS):
    """Parameters and loss after every step."""
    model = make_model()
    opt = make_opt(model.parameters())
    history = []
    for x, y in _batches(model, steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        _quietly(opt.step)
        history.append(([p.detach().clone() for p in model.parameters()], float(loss.detach())))
    return history, opt, list(model.parameters())


PORT_CASES = [
    # (desc, model, port factory, preset, hyperparameters)
    ("sgd-sai 1.0.3 on an MLP", _mlp, sgd_sai.SGD_sai, "sgd-sai-1.0.3", {"lr": 1e-3}),
    ("sgd-sai 1.0.3 on a transformer block", _transformer_block, sgd_sai.SGD_sai, "sgd-sai-1.0.3", {"lr": 1e-3}),
    (
        "sgd-sai 1.0.3, momentum 0.5, weight decay 0.1",
        _mlp,
        sgd_sai.SGD_sai,
        "sgd-sai-1.0.3",
        {"lr": 1e-3, "momentum": 0.5, "weight_decay": 0.1},
    ),
    ("pytorch-optimizer 4 on an MLP", _mlp, pytorch_optimizer.SGDSaI, "pytorch-optimizer-4", {"lr": 1e-3}),
    (
        "pytorch-optimizer 4 on a transformer block",
        _transformer_block,
        pytorch_optimizer.SGDSaI,
        "pytorch-optimizer-4",
        {"lr": 1e-3},
    ),
    (
        "pytorch-optimizer 4, per-tensor loop, maximize",
        _mlp,
        lambda params, **kw: pytorch_optimizer.SGDSaI(params, foreach=False, **kw),
        "pytorch-optimizer-4",
        {"lr": 1e-3, "maximize": True},
    ),
]


@pytest.mark.parametrize(
    ("make_model", "make_port", "preset", "hyper"),
    [case[1:] for case in PORT_CASES],
    ids=[case[0] for case in PORT_CASES],
)
def test_preset_follows_the_port_step_for_step(make_model, make_port, preset: str, hyper: dict[str, Any]) -> None:
    expected, _, _ = _train(make_model, lambda params: make_port(params, **hyper))
    got, _, _ = _train(make_model, lambda params: SGDSaI(params, preset=preset, **hyper))
    for step, ((got_params, _), (want_params, _)) in enumerate(zip(got, expected)):
        for block, (a, b) in enumerate(zip(got_params, want_params)):
            error = float((a - b).abs().max())
            assert error <= RTOL * float(b.abs().max()), f"step {step + 1}, block {block}: max abs error {error:.3g}"


def test_sgd_sai_one_output_bias_diverges_and_the_preset_diverges_identically() -> None:
    # PORTS.md: a 1-element tensor gets ||g|| / 1e-8, a scale of ~1e7, and the loss explodes.
    # The port's own defaults (lr 1e-2, weight decay 1e-2); SGDSaI's default lr is 1e-3.
    port, port_opt, port_params = _train(lambda: _mlp(outputs=1), sgd_sai.SGD_sai, steps=6)
    ours, opt, params = _train(lambda: _mlp(outputs=1), lambda p: SGDSaI(p, lr=1e-2, preset="sgd-sai-1.0.3"), steps=6)
    bias, port_bias = params[-1], port_params[-1]
    assert opt.state[bias]["scale"] > 1e6
    assert opt.state[bias]["scale"] == pytest.approx(float(port_opt.state[port_bias]["gsnr"]), rel=RTOL)
    assert port[-1][1] > 1e30 and ours[-1][1] > 1e30
    for (_, port_loss), (_, loss) in zip(port, ours):
        assert loss == pytest.approx(port_loss, rel=1e-9)
    # The default preset ("sgd-sai") gives that bias G = sqrt(1) and trains, at the port's lr too.
    for preset in ("sgd-sai", "paper"):
        safe, safe_opt, safe_params = _train(
            lambda: _mlp(outputs=1),
            lambda p: SGDSaI(p, lr=1e-2, preset=preset),
            steps=6,  # noqa: B023
        )
        bias_state = safe_opt.state[safe_params[-1]]
        assert bias_state["scale"] == (1.0 / bias_state["max_gsnr"] if preset == "paper" else 1.0)
        assert all(math.isfinite(loss) and loss < 10 for _, loss in safe), preset


def test_sgd_sai_crashes_with_momentum_zero_where_the_preset_works() -> None:
    model = _mlp()
    model(torch.ones(2, 6, dtype=torch.float64)).sum().backward()
    with pytest.raises(UnboundLocalError):
        _quietly(sgd_sai.SGD_sai(model.parameters(), momentum=0.0).step)
    opt = SGDSaI(model.parameters(), momentum=0.0, preset="sgd-sai-1.0.3")
    opt.step()
    assert all("momentum_buffer" not in opt.state[p] for p in model.parameters())


def test_sgd_sai_crashes_on_a_late_gradient_where_the_preset_initializes_it() -> None:
    for make_opt, expectation in (
        (sgd_sai.SGD_sai, pytest.raises(KeyError, match="gsnr")),
        (
            lambda p: SGDSaI(p, preset="sgd-sai-1.0.3"),
            contextlib.nullcontext(),
        ),
    ):
        model = _mlp()
        params = list(model.parameters())
        opt = make_opt(params)
        model(torch.ones(2, 6, dtype=torch.float64)).sum().backward()
        params[0].grad = None
        _quietly(opt.step)
        opt.zero_grad()
        model(torch.ones(2, 6, dtype=torch.float64)).sum().backward()
        with expectation:
            _quietly(opt.step)


def test_sgd_sai_calls_the_closure_twice_on_step_one_and_sgdsai_once() -> None:
    for make_opt, expected_calls in ((sgd_sai.SGD_sai, 2), (lambda p: SGDSaI(p, preset="sgd-sai-1.0.3"), 1)):
        model = _mlp()
        opt = make_opt(model.parameters())
        calls = []

        def closure() -> torch.Tensor:
            calls.append(1)
            opt.zero_grad()
            loss = model(torch.ones(2, 6, dtype=torch.float64)).sum()
            loss.backward()
            return loss

        _quietly(lambda: opt.step(closure))
        assert len(calls) == expected_calls


def test_sgd_sai_recomputes_gsnr_after_resume_where_sgdsai_resumes_exactly() -> None:
    def resumed(make_opt: Callable[..., Any]) -> list[torch.Tensor]:
        model = _mlp()
        opt = make_opt(model.parameters())
        batches = _batches(model, 6)
        for i, (x, y) in enumerate(batches):
            if i == 3:  # checkpoint: a new optimizer loads the state dict
                state = opt.state_dict()
                opt = make_opt(model.parameters())
                opt.load_state_dict(state)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            _quietly(opt.step)
        return [p.detach() for p in model.parameters()]

    def uninterrupted(make_opt: Callable[..., Any]) -> list[torch.Tensor]:
        history, _, _ = _train(_mlp, make_opt, steps=6)
        return history[-1][0]

    port = sgd_sai.SGD_sai
    ours = lambda p: SGDSaI(p, preset="sgd-sai-1.0.3")  # noqa: E731
    assert not all(torch.equal(a, b) for a, b in zip(resumed(port), uninterrupted(port)))
    assert all(torch.equal(a, b) for a, b in zip(resumed(ours), uninterrupted(ours)))


def test_pytorch_optimizer_negates_the_callers_gradient_under_maximize_and_sgdsai_does_not() -> None:
    for make_opt, negated in (
        (lambda p: pytorch_optimizer.SGDSaI(p, maximize=True), True),
        (
            lambda p: SGDSaI(p, preset="pytorch-optimizer-4", maximize=True),
            False,
        ),
    ):
        model = _mlp()
        weight = model[0].weight
        opt = make_opt(model.parameters())
        model(torch.ones(2, 6, dtype=torch.float64)).sum().backward()
        grad = weight.grad.clone()
        opt.step()
        assert torch.equal(weight.grad, -grad if negated else grad)


def test_zero_first_gradient_freezes_the_tensor_in_the_port_and_its_preset_only() -> None:
    frozen = {}
    for name, make_opt in (
        ("port", lambda p: pytorch_optimizer.SGDSaI(p, weight_decay=0.0)),
        ("preset", lambda p: SGDSaI(p, preset="pytorch-optimizer-4", weight_decay=0.0)),
        ("default", lambda p: SGDSaI(p, weight_decay=0.0)),
    ):
        model = _mlp()
        weight = model[0].weight
        opt = make_opt(model.parameters())
        start = weight.detach().clone()
        for step, (x, y) in enumerate(_batches(model, 3)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            if step == 0:
                weight.grad.zero_()
            opt.step()
        frozen[name] = torch.equal(weight, start)
    # The default preset defers the zero first gradient and initializes the tensor at step 2.
    assert frozen == {"port": True, "preset": True, "default": False}
