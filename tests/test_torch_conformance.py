"""The torch runners are discovered by the conformance suite and replay golden cases.

``tests/test_conformance.py`` replays every case on every discovered runner; this file checks that
the torch ones are among them, and replays one case per dtype so that a broken runner shows here
with a short traceback.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from sai_conformance import Runner, available_runners, check_case, load_cases  # noqa: E402

TORCH_RUNNERS = ("torch", "torch-foreach", "torch-fused")


def test_torch_runners_are_discovered() -> None:
    names = [runner.name for runner in available_runners()]
    for name in TORCH_RUNNERS:
        assert name in names
    assert all(isinstance(runner, Runner) for runner in available_runners(TORCH_RUNNERS))


SAMPLE_CASES = [
    "shapes-sgd-sai-float64",
    "two_groups-paper-float32",
    "first_gradients-sgd-sai-float32",  # NaN, inf and zero first gradients: deferred
    "overflow-sgd-sai-bfloat16",
    "zero_size_alone-paper-float64",
]


@pytest.mark.parametrize("case_name", SAMPLE_CASES)
@pytest.mark.parametrize("runner_name", TORCH_RUNNERS)
def test_torch_runner_passes_a_sample_case(runner_name: str, case_name: str) -> None:
    (runner,) = available_runners([runner_name])
    case = next(c for c in load_cases() if c.name == case_name)
    for mode in ("one_step", "trajectory"):
        result = check_case(runner, case, mode)
        assert result.status == "pass", result.detail
