"""torch.optim's common keywords on ``sai_torch.SGDSaI``: what code written for torch.optim may pass.

``maximize``, ``foreach`` and ``fused`` are SGDSaI's own flags (tested with the optimizer).
``capturable`` and ``differentiable`` are accepted with the one value SGDSaI supports, ``False``;
anything else raises ``ValueError`` naming the argument and the value, at construction, in
``add_param_group`` (the group is not added) and at ``step()`` for a group edited afterwards
(nothing changes). ``nesterov`` and ``dampening`` (torch.optim.SGD's) are refused as unknown
keywords: SGD-SaI's momentum has one fixed form. See docs/torch.md, "torch.optim keywords".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")
import torch
from torch_helpers import one_torch_thread

from sai_torch import SGDSaI


@dataclasses.dataclass(frozen=True)
class Refused:
    desc: str
    kwargs: dict[str, Any]
    error: type[Exception]
    needles: tuple[str, ...]  # what the message must name


REFUSED = [
    Refused(
        "differentiable=True", {"differentiable": True}, ValueError, ("Invalid differentiable: True", "torch.no_grad")
    ),
    Refused("capturable=True", {"capturable": True}, ValueError, ("Invalid capturable: True", "host")),
    Refused("differentiable=None", {"differentiable": None}, ValueError, ("Invalid differentiable: None",)),
    Refused("differentiable as a string", {"differentiable": "no"}, ValueError, ("Invalid differentiable: 'no'",)),
    Refused("capturable=1", {"capturable": 1}, ValueError, ("Invalid capturable: 1",)),
    Refused("torch.optim.SGD's nesterov", {"nesterov": False}, TypeError, ("nesterov",)),
    Refused("torch.optim.SGD's dampening", {"dampening": 0.0}, TypeError, ("dampening",)),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _steps(opt: SGDSaI, model: torch.nn.Module, steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(16, 4, generator=generator)).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("case", REFUSED, ids=[c.desc for c in REFUSED])
def test_refused_keyword_names_argument_and_value(case: Refused) -> None:
    with pytest.raises(case.error) as raised:
        SGDSaI(_model().parameters(), **case.kwargs)
    for needle in case.needles:
        assert needle in str(raised.value)


@pytest.mark.parametrize(
    "kwargs", [{"differentiable": False}, {"capturable": False}, {"capturable": False, "differentiable": False}]
)
def test_false_is_accepted_and_changes_nothing(kwargs: dict[str, Any]) -> None:
    plain_model, flagged_model = _model(), _model()
    plain, flagged = SGDSaI(plain_model.parameters(), lr=1e-2), SGDSaI(flagged_model.parameters(), lr=1e-2, **kwargs)
    _steps(plain, plain_model)
    _steps(flagged, flagged_model)
    for a, b in zip(plain_model.parameters(), flagged_model.parameters()):
        assert torch.equal(a, b)
    # Not stored: the groups and the state dict are those of an optimizer built without them.
    assert flagged.state_dict()["param_groups"] == plain.state_dict()["param_groups"]


@pytest.mark.parametrize("name", ["differentiable", "capturable"])
def test_parameter_group_with_true_is_refused_and_not_added(name: str) -> None:
    model = _model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    with pytest.raises(ValueError, match=f"Invalid {name}: True"):
        SGDSaI([{"params": first, name: True}])
    opt = SGDSaI(first)
    with pytest.raises(ValueError, match=f"Invalid {name}: True"):
        opt.add_param_group({"params": second, name: True})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": second, name: False})  # as a torch.optim optimizer's group holds it
    assert opt.param_groups[1][name] is False


def test_group_edited_to_differentiable_true_refused_at_step_without_change() -> None:
    model = _model()
    opt = SGDSaI(model.parameters(), lr=1e-2)
    _steps(opt, model, steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    model(torch.randn(16, 4)).square().mean().backward()
    opt.param_groups[0]["differentiable"] = True
    with pytest.raises(ValueError, match="Invalid differentiable: True"):
        opt.step()
    for p, want, buffer in zip(model.parameters(), before, buffers):
        assert torch.equal(p, want) and torch.equal(opt.state[p]["momentum_buffer"], buffer)


def test_groups_copied_from_torch_optim_load() -> None:
    # torch.optim.SGD's groups carry differentiable=False (and its other flags): SGDSaI takes them.
    model = _model()
    sgd_groups = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9).param_groups
    opt = SGDSaI([{"params": g["params"], "lr": g["lr"], "differentiable": g["differentiable"]} for g in sgd_groups])
    _steps(opt, model, steps=1)
    assert all("scale" in opt.state[p] for p in model.parameters())
