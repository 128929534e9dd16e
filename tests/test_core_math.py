"""The array-API core under numpy, array_api_strict, torch and jax.numpy, in float64 and float32."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sai_core
from sai_core import (
    NAMESPACE_CONTRACT,
    ReferenceSGDSaI,
    compute_dtype,
    gsnr,
    raw_gsnr,
    resolve_config,
    scale_from_gsnr,
    update_momentum,
    update_param,
)

# Per-dtype tolerance of the core against a float64 NumPy evaluation of the same formula: two
# reductions over <= 360 elements, a sqrt and a division. float32: ~log2(n) * 2**-24 per
# reduction -> 4e-6 with headroom; float64: the namespaces sum in different orders -> 1e-12.
CORE_RTOL = {"float64": 1e-12, "float32": 4e-6}

SHAPES = [(), (1,), (7,), (1, 16), (16, 1), (8, 16), (3, 4, 5, 6)]


def _numpy_gsnr(g: np.ndarray, eps: float, ddof: int = 1) -> float:
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    if g.size <= 1 or g.max() == g.min():
        return math.sqrt(g.size)
    return float(np.linalg.norm(g) / (np.std(g, ddof=ddof) + eps))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gsnr_every_namespace(xp, shape):
    rng = np.random.default_rng(len(shape))
    values = 0.4 + rng.standard_normal(shape)
    grad = xp.asarray(values)
    result = gsnr(grad, eps=1e-8)
    rounded = xp.to_numpy(grad)  # the inputs as the namespace holds them (float32-rounded)
    expected = _numpy_gsnr(rounded, 1e-8)
    assert xp.to_numpy(result).shape == ()
    assert abs(float(xp.to_numpy(result)) - expected) <= CORE_RTOL[xp.dtype_name] * expected


def test_statistics_dtype_follows_input(xp):
    result = gsnr(xp.asarray(np.arange(6.0).reshape(2, 3)))
    assert result.dtype == (xp.xp.float64 if xp.dtype_name == "float64" else xp.xp.float32)


def test_low_precision_statistics_in_float32():
    g16 = np.arange(12, dtype=np.float16).reshape(3, 4)
    assert compute_dtype(g16) == np.float32
    assert gsnr(g16).dtype == np.float32


def test_update_param_every_namespace(xp):
    theta = xp.asarray([[1.0, -2.0], [0.5, 4.0]])
    direction = xp.asarray([[0.5, 0.25], [-1.0, 2.0]])
    out = update_param(theta, direction, xp.xp.asarray(0.5, dtype=xp.dtype), lr=0.1, weight_decay=0.2, xp=xp.xp)
    theta_np = xp.to_numpy(theta)
    expected = theta_np - 0.1 * 0.2 * theta_np - 0.1 * 0.5 * xp.to_numpy(direction)
    np.testing.assert_allclose(xp.to_numpy(out), expected, rtol=CORE_RTOL[xp.dtype_name])
    assert out.dtype == theta.dtype


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("momentum_init", ["grad", "zeros"])
def test_update_momentum_traced_flag_equals_python_flag(xp, first, momentum_init):
    config = resolve_config(momentum_init=momentum_init)
    buffer = xp.asarray([1.0, 2.0, 3.0])
    grad = xp.asarray([0.5, -0.5, 2.0])
    flag = xp.xp.asarray(first)
    static = update_momentum(buffer, grad, momentum=0.9, first=first, config=config, xp=xp.xp)
    traced = update_momentum(buffer, grad, momentum=0.9, first=flag, config=config, xp=xp.xp)
    np.testing.assert_array_equal(xp.to_numpy(static), xp.to_numpy(traced))


def test_reference_runs_in_every_namespace(xp):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(3)]
    oracle = ReferenceSGDSaI(params)
    opt = ReferenceSGDSaI([xp.asarray(p) for p in params], xp=xp.xp, dtype=xp.dtype)
    for g in grads:
        oracle.step(g)
        opt.step([xp.asarray(x) for x in g])
    # float32 inputs are rounded once (2**-24) before three steps of float32 arithmetic.
    rtol = {"float64": 1e-12, "float32": 1e-5}[xp.dtype_name]
    for got, want in zip(opt.params, oracle.params):
        err = np.max(np.abs(xp.to_numpy(got) - want)) / np.max(np.abs(want))
        assert err <= rtol


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis), on float64 NumPy.

# The statistic rescales by a power of two where the squares would overflow or underflow
# (docs/spec.md, "Numerical range"), so the properties hold over every finite float64.
finite = st.one_of(st.just(0.0), st.floats(allow_nan=False, allow_infinity=False))
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, shapes, elements=finite))
def test_gsnr_at_least_sqrt_n_minus_one(g):
    # ||g||^2 = (n-1) s^2 + n mean^2  =>  G = ||g|| / s >= sqrt(n-1) for eps = 0 and s > 0.
    n = g.size
    if n < 2 or g.max() == g.min():
        return
    value = float(gsnr(g, eps=0.0))
    assert value >= math.sqrt(n - 1) * (1 - 1e-12)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.float64, shapes, elements=st.floats(min_value=-10, max_value=10)),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_gsnr_invariant_to_gradient_scale(g, factor):
    if g.size < 2 or g.max() == g.min() or np.std(g, ddof=1) < 1e-3:
        return
    s = np.std(g, ddof=1)
    a, b = float(gsnr(g)), float(gsnr(g * factor))
    # G(c g) = ||g|| / (s + eps / c): relative to G(g) it moves by at most eps / min(s, c s),
    # which is small exactly while s >> eps; plus float64 rounding.
    bound = 1e-8 / min(s, factor * s) + 1e-13
    assert abs(a - b) <= bound * a


@settings(max_examples=100, deadline=None)
@given(shapes, st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_zero_or_constant_first_gradient_gives_sqrt_n(shape, value):
    g = np.full(shape, value)
    assert float(gsnr(g)) == pytest.approx(math.sqrt(g.size), rel=1e-15)


@settings(max_examples=50, deadline=None)
@given(st.lists(hnp.arrays(np.float64, shapes, elements=finite), min_size=1, max_size=4))
def test_momentum_zero_keeps_no_buffer(grads):
    opt = ReferenceSGDSaI([np.zeros_like(g) for g in grads], momentum=0.0)
    opt.step(grads)
    opt.step(grads)
    assert opt.momentum_buffer == [None] * len(grads)


# ---------------------------------------------------------------------------------------------
# Degenerate blocks and knobs.


@pytest.mark.parametrize(
    "desc, grad, knobs, expected",
    [
        ("zero gradient, paper", np.zeros((3, 3)), {}, 3.0),
        ("constant gradient, paper", np.full(7, 0.1), {}, math.sqrt(7)),
        ("scalar block, paper", np.array(5.0), {}, 1.0),
        ("scalar block, norm", np.array(-5.0), {"degenerate": "norm"}, 5.0),
        ("constant, norm_over_eps", np.full(4, 0.5), {"degenerate": "norm_over_eps"}, 1.0 / 1e-8),
        ("zero, norm_over_eps", np.zeros(4), {"degenerate": "norm_over_eps"}, 0.0),
        ("vector, vector_rule=norm", np.array([3.0, 4.0]), {"vector_rule": "norm"}, 5.0),
        ("row matrix, vector_rule=norm", np.array([[3.0, 4.0]]), {"vector_rule": "norm"}, 5.0),
        ("column matrix keeps ratio", np.array([[3.0], [4.0]]), {"vector_rule": "norm"}, 5.0 / (math.sqrt(0.5) + 1e-8)),
        ("sqrt_numel ignores gradient", np.arange(12.0).reshape(3, 4), {"snr": "sqrt_numel"}, math.sqrt(12)),
        ("biased std", np.array([1.0, 3.0]), {"std_correction": 0}, math.sqrt(10) / (1.0 + 1e-8)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_gsnr_knob_table(desc, grad, knobs, expected):
    assert float(gsnr(grad, **knobs)) == pytest.approx(expected, rel=1e-14)


def test_scale_with_zero_max_is_zero_not_nan():
    config = resolve_config("sgd-sai-1.0.4")
    value = scale_from_gsnr(np.float64(0.0), np.float64(0.0), config=config, xp=np)
    assert float(value) == 0.0


def test_presets_resolve_to_spec_table():
    # SPEC v2, "Named presets": snr, normalize, std_correction, degenerate, vector_rule,
    # momentum_init, zero_gradient ("-" there is None here: irrelevant under sqrt_numel).
    table = {
        "sgd-sai": ("gsnr", "none", 1, "sqrt_numel", "ratio", "grad", "defer"),
        "paper": ("gsnr", "max", 1, "sqrt_numel", "ratio", "grad", "defer"),
        "sgd-sai-1.0.3": ("gsnr", "none", 1, "norm_over_eps", "ratio", "grad", "degenerate"),
        "sgd-sai-1.0.4": ("gsnr", "max", 1, "norm_over_eps", "ratio", "grad", "degenerate"),
        "sgd-sai-1.1.0": ("sqrt_numel", "none", None, None, None, "grad", "degenerate"),
        "pytorch-optimizer-4": ("gsnr", "none", 1, "norm", "norm", "zeros", "degenerate"),
    }
    assert set(table) == set(sai_core.PRESETS)
    assert sai_core.DEFAULT_PRESET == "sgd-sai" and resolve_config().preset == "sgd-sai"
    for preset, row in table.items():
        knobs = resolve_config(preset).knobs()
        assert list(knobs) == list(sai_core.KNOB_VALUES)
        for (name, value), want in zip(knobs.items(), row):
            if want is not None:
                assert value == want, (preset, name)


def test_default_hyperparameters_are_spec_v2():
    assert dict(sai_core.DEFAULT_HYPERPARAMETERS) == {
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 1e-2,
        "eps": 1e-8,
        "maximize": False,
    }
    opt = ReferenceSGDSaI([np.ones(2)])
    assert opt.defaults == dict(sai_core.DEFAULT_HYPERPARAMETERS)
    assert opt.config == resolve_config("sgd-sai")


# ---------------------------------------------------------------------------------------------
# Informative first gradients and the overflow-safe statistic (SPEC v2 step 2).

INFORMATIVE = [
    # (desc, gradient, preset, informative)
    ("ordinary", np.array([1.0, -2.0, 0.5]), "sgd-sai", True),
    ("one zero element", np.array([0.0, 0.0, 3.0]), "sgd-sai", True),
    ("all zero, defer", np.zeros((2, 3)), "sgd-sai", False),
    ("all zero, paper defers too", np.zeros((2, 3)), "paper", False),
    ("all negative zero", -np.zeros(4), "sgd-sai", False),
    ("all zero, port preset: a constant gradient", np.zeros((2, 3)), "sgd-sai-1.0.3", True),
    ("a NaN", np.array([1.0, np.nan, 2.0]), "sgd-sai", False),
    ("a NaN, port preset", np.array([1.0, np.nan, 2.0]), "pytorch-optimizer-4", False),
    ("+inf", np.array([np.inf, 1.0]), "sgd-sai", False),
    ("-inf", np.array([-np.inf, 1.0]), "sgd-sai-1.0.4", False),
    ("zero-size", np.zeros((0, 3)), "sgd-sai", False),
    ("zero-size, port preset", np.zeros((0,)), "sgd-sai-1.0.3", False),
    ("largest finite float64", np.array([1.7e308, -1.7e308]), "sgd-sai", True),
    ("smallest subnormal float64", np.array([5e-324, 0.0]), "sgd-sai", True),
]


@pytest.mark.parametrize("grad, preset, want", [c[1:] for c in INFORMATIVE], ids=[c[0] for c in INFORMATIVE])
def test_is_informative(grad, preset, want):
    with np.errstate(all="ignore"):
        assert bool(sai_core.is_informative(grad, config=resolve_config(preset), xp=np)) is want


def test_is_informative_under_array_api_strict():
    import array_api_strict as xps

    config = resolve_config()
    assert bool(sai_core.is_informative(xps.asarray([0.0, 1.0]), config=config))
    assert not bool(sai_core.is_informative(xps.asarray([0.0, 0.0]), config=config))
    assert not bool(sai_core.is_informative(xps.asarray([float("nan"), 1.0]), config=config))


def _unscaled_gsnr(g: np.ndarray, eps: float) -> np.ndarray:
    """raw_gsnr's formula for the default knobs without the power-of-two scaling, same NumPy ops."""
    n = g.size
    norm = np.sqrt(np.sum(g * g))
    centred = g - np.sum(g) / n
    std = np.sqrt(np.sum(centred * centred) / (n - 1))
    return norm / (std + eps)


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(
        np.float32,
        st.integers(2, 64),
        elements=st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False),
    )
)
def test_in_range_gradients_take_the_unscaled_path_bit_for_bit(values):
    if values.max() == values.min() or np.abs(values).max() < 2.0**-39:
        return  # degenerate, or below the float32 safe range: another path by design
    config = resolve_config()
    got = raw_gsnr(values, eps=1e-8, config=config, xp=np)
    assert got.dtype == np.float32
    assert got.tobytes() == np.float32(_unscaled_gsnr(values, 1e-8)).tobytes()


# float32 values times 2**-140 would be subnormal (fewer significant bits: no exact rescale); that
# input is covered by OVERFLOW below.
RESCALES = [(np.float32, k) for k in (-100, -60, -20, 20, 60, 100, 120)] + [
    (np.float64, k) for k in (-1000, -600, -140, -20, 20, 140, 600, 1000)
]


@pytest.mark.parametrize("dtype, exponent", RESCALES, ids=[f"{d.__name__}-2**{k}" for d, k in RESCALES])
def test_power_of_two_rescaling_is_exact(dtype, exponent):
    # G(g * 2**k, eps * 2**k) == G(g, eps) exactly, also where the squares of g * 2**k overflow or
    # underflow: the statistic rescales by a power of two, which is exact. float32 cannot hold
    # 2**k itself for |k| > 126: the factor is applied to the float64 values before rounding.
    rng = np.random.default_rng(exponent + 1000)
    base = (0.3 + rng.standard_normal(257)).astype(dtype)
    scaled = (base.astype(np.float64) * 2.0**exponent).astype(dtype)
    assert np.array_equal(scaled.astype(np.float64) / 2.0**exponent, base.astype(np.float64))
    config = resolve_config()
    # eps a power of two that stays normal after the rescale, so eps * 2**k is exact too (a Python
    # float: it takes the statistic's dtype, as a user's eps does).
    eps = 2.0**-6 if exponent > -100 and 2.0**-6 * 2.0**exponent < np.finfo(dtype).max else 0.0
    want = raw_gsnr(base, eps=eps, config=config, xp=np)
    got = raw_gsnr(scaled, eps=eps * 2.0**exponent, config=config, xp=np)
    assert got.dtype == dtype
    assert np.isfinite(got) and float(got) == float(want)


OVERFLOW = [
    # (desc, shape, scale): the float32 statistic, unscaled, overflows or underflows here.
    ("1e30: squares overflow float32", (8, 16), 1e30),
    ("1e16 in a 2048x2048 tensor: the sum of squares overflows", (2048, 2048), 1e16),
    ("1e-30: squares underflow float32", (8, 16), 1e-30),
    ("subnormal float32 gradient", (64,), 1e-42),
    ("near the float32 maximum", (7,), 1e38),
]


@pytest.mark.parametrize("shape, scale", [c[1:] for c in OVERFLOW], ids=[c[0] for c in OVERFLOW])
def test_float32_statistic_matches_float64_for_extreme_gradients(shape, scale):
    from sai_conformance._tolerances import TOLERANCES

    rng = np.random.default_rng(7)
    with np.errstate(over="ignore"):
        grad = ((0.3 + rng.standard_normal(shape)) * scale).astype(np.float32)
    assert np.all(np.isfinite(grad))
    config = resolve_config()
    got = float(raw_gsnr(grad, eps=0.0, config=config, xp=np))
    want = float(raw_gsnr(grad.astype(np.float64), eps=0.0, config=config, xp=np))
    # Subnormal inputs carry fewer significant bits; the statistic of the rounded values is what
    # both compute, so the float32 one-step tolerance still applies.
    assert math.isfinite(got) and abs(got - want) <= TOLERANCES["float32"].one_step * want


# ---------------------------------------------------------------------------------------------
# The namespace contract and import isolation.


class _Recording:
    """Wraps a namespace and records every attribute the core reads from it."""

    def __init__(self, inner):
        self._inner = inner
        self.used = set()

    def __getattr__(self, name):
        self.used.add(name)
        return getattr(self._inner, name)


@pytest.mark.parametrize("preset", sorted(sai_core.PRESETS))
def test_core_uses_exactly_the_namespace_contract(preset):
    import array_api_strict

    recorder = _Recording(array_api_strict)
    opt = ReferenceSGDSaI(
        [array_api_strict.ones((3, 4)), array_api_strict.ones(5), array_api_strict.ones(())],
        xp=recorder,
        dtype=array_api_strict.float32,
        preset=preset,
    )
    grads = [
        array_api_strict.ones((3, 4)),
        array_api_strict.asarray([1.0, 2.0, 3.0, 4.0, 6.0]),
        array_api_strict.ones(()),
    ]
    opt.step(grads)
    opt.step(grads)
    assert recorder.used <= set(NAMESPACE_CONTRACT), recorder.used - set(NAMESPACE_CONTRACT)


def test_contract_is_fully_used_by_paper_preset():
    import array_api_strict

    recorder = _Recording(array_api_strict)
    opt = ReferenceSGDSaI([array_api_strict.ones((3, 4))], xp=recorder, dtype=array_api_strict.float32)
    opt.step([array_api_strict.reshape(array_api_strict.arange(12.0), (3, 4))])
    assert recorder.used | {"float64"} >= set(NAMESPACE_CONTRACT) - {"float64"}


def test_import_sai_core_imports_no_framework():
    code = "import sai_core, sys; assert not {'torch','jax','tensorflow'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
