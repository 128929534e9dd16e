"""The JAX conformance runners are discovered, say why a case is not applicable, read a block's
scale (and M) as unset exactly while it is uninitialized, and leave the process's float64 setting
alone (tests/test_conformance.py replays every case on them).
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
    result = check_case(runner, CASES["momentum_0-sgd-sai-float64"], "trajectory")
    assert result.status == "pass", result.detail
    assert jax.config.jax_enable_x64 == before
    assert jnp.asarray(1.0).dtype == (jnp.float64 if before else jnp.float32)


# (case, step): the reference's state after that step has uninitialized blocks, or no M yet.
UNSET = [
    ("first_gradients-sgd-sai-float32", 1),  # NaN, inf and all-zero first gradients: three wait
    ("first_gradients-paper-float64", 2),  # one still waits (a second zero gradient)
    ("zero_size-paper-float32", 1),  # nothing initialized at all: M unset
]


@pytest.mark.parametrize("name", ["jax", "jax-jit"])
@pytest.mark.parametrize("case_name, step", UNSET)
def test_unset_scales_and_m_are_read_from_the_flags_and_loaded_back(name, case_name, step):
    (runner,) = available_runners([name])
    case = CASES[case_name]
    expected = case.expected[step - 1]
    assert any(scale is None for scale in expected.scale), "the case should have an uninitialized block"
    (got,) = runner.run(case, case.snapshot_before(step - 1), step - 1, 1)
    assert [s is None for s in got.scale] == [s is None for s in expected.scale]
    assert (got.max_gsnr is None) == (expected.max_gsnr is None)
    assert [b is None for b in got.momentum_buffer] == [b is None for b in expected.momentum_buffer]
    # Loading that snapshot (uninitialized blocks, maybe no M) and stepping on matches the next one.
    if step < case.num_steps:
        (after,) = runner.run(case, expected, step, 1)
        assert [s is None for s in after.scale] == [s is None for s in case.expected[step].scale]
        assert (after.max_gsnr is None) == (case.expected[step].max_gsnr is None)
