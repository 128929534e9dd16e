"""Every installed in-process runner replays every golden case, one-step and trajectory.

Runners in modules marked ISOLATED (Keras: one backend per process) are replayed by their own
backend's tests in subprocesses. Rerun one entry with
``python -m pytest tests/test_conformance.py -k "RUNNER and CASE and MODE"`` or with the command a
failure prints (``sai-conformance run --backend RUNNER --case CASE --mode MODE``).
"""

from __future__ import annotations

import pytest

from sai_conformance import available_runners, check_case, load_cases
from sai_conformance._harness import MODES

RUNNERS = available_runners()
CASES = load_cases()


def test_core_runners_are_installed():
    assert {"numpy", "array-api-strict"} <= {r.name for r in RUNNERS}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("runner", RUNNERS, ids=[r.name for r in RUNNERS])
def test_runner_matches_golden(runner, case, mode):
    result = check_case(runner, case, mode)
    if result.status == "n/a":
        pytest.skip(f"not applicable: {result.detail}")
    if result.status == "xfail":
        pytest.xfail(result.detail)
    assert result.status == "pass", result.detail


class _BiasedStdRunner:
    """A deliberately wrong port (biased std): the harness must catch and describe it."""

    name = "biased-std"

    def __init__(self):
        import numpy as np

        from sai_conformance.runners._core import CoreRunner

        self._inner = CoreRunner(self.name, np, {"float64": np.float64, "float32": np.float32})

    def not_applicable(self, case):
        return self._inner.not_applicable(case)

    def run(self, case, start, first_step, num_steps):
        import dataclasses

        altered = dataclasses.replace(case, knobs={**case.knobs, "std_correction": 0})
        return self._inner.run(altered, start, first_step, num_steps)


@pytest.mark.parametrize("mode", MODES)
def test_harness_reports_a_wrong_port(mode):
    case = next(c for c in CASES if c.name == "shapes-paper-float64")
    result = check_case(_BiasedStdRunner(), case, mode)
    assert result.status == "fail"
    assert result.step == 0 and result.field in {"params", "scale"}
    for needle in (
        "backend biased-std",
        "case shapes-paper-float64",
        "step 1",
        "max abs err",
        "max rel err",
        "Rerun: sai-conformance run --backend biased-std --case shapes-paper-float64",
    ):
        assert needle in result.detail
