"""The JAX conformance runners are discovered, say why a case is not applicable, and leave the
process's float64 setting alone (tests/test_conformance.py replays every case on them).
"""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")
jnp = jax.numpy

from sai_conformance import available_runners, check_case, load_cases  # noqa: E402

CASES = {case.name: case for case in load_cases()}


def test_eager_and_jit_runners_are_discovered():
    assert {"jax", "jax-jit"} <= {runner.name for runner in available_runners()}


@pytest.mark.parametrize("name", ["jax", "jax-jit"])
def test_cases_with_absent_gradients_are_not_applicable_with_the_reason(name):
    (runner,) = available_runners([name])
    absent = [c for c in CASES.values() if any(g is None for row in c.grads for g in row)]
    assert absent, "the golden set should contain absent-gradient cases"
    for case in absent:
        assert "absent gradient" in runner.not_applicable(case)
    assert runner.not_applicable(CASES["shapes-paper-bfloat16"]) is None


def test_float64_cases_do_not_switch_x64_on_for_the_process():
    (runner,) = available_runners(["jax-jit"])
    before = jax.config.jax_enable_x64
    result = check_case(runner, CASES["momentum_0-paper-float64"], "trajectory")
    assert result.status == "pass", result.detail
    assert jax.config.jax_enable_x64 == before
    assert jnp.asarray(1.0).dtype == (jnp.float64 if before else jnp.float32)
