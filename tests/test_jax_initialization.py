"""Deferred initialization in sai_jax (SPEC.md v2, step 2): a leaf initializes at its first
*informative* gradient (finite, and not all zero under ``zero_gradient="defer"``).

JAX has no absent gradient, so "the same run without that leaf" is the same tree with the leaf
removed. Every table runs in float32 and float64 (inside ``jax.enable_x64``, as the conformance
runner does), eagerly and under ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy

import sai_jax  # noqa: E402
import sai_jax._transform as transform  # noqa: E402
from sai_conformance import TOLERANCES  # noqa: E402
from sai_core import NonFiniteGradientWarning, ReferenceSGDSaI  # noqa: E402

DTYPES = ["float32", "float64"]
MODES = [pytest.param(False, id="eager"), pytest.param(True, id="jit")]


def _is_sai(node: Any) -> bool:
    return isinstance(node, sai_jax.ScaleBySaIState)


def _sai_state(state: Any) -> sai_jax.ScaleBySaIState:
    (sai,) = [s for s in jax.tree.leaves(state, is_leaf=_is_sai) if _is_sai(s)]
    return sai


def _run(opt: Any, params: dict, grads: list[dict], *, jit: bool) -> list[tuple[dict, sai_jax.ScaleBySaIState]]:
    """Parameters and SaI state after every step."""

    def step(p, s, g):
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    step = jax.jit(step) if jit else step
    p, s = params, opt.init(params)
    out = []
    for g in grads:
        p, s = step(p, s, g)
        out.append((p, _sai_state(s)))
    return out


def _reference(params: dict, grads: list[dict], **kwargs: Any) -> list[tuple[list, list, Any]]:
    """(params, scales, M) of the float64 reference after every step, leaves in jax.tree order."""
    names = sorted(params)
    reference = ReferenceSGDSaI([np.asarray(params[k], np.float64) for k in names], **kwargs)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteGradientWarning)
        for g in grads:
            reference.step([np.asarray(g[k], np.float64) for k in names])
            out.append(([p.copy() for p in reference.params], list(reference.scale), reference.max_gsnr))
    return out


def _bits(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.view(np.uint64 if x.dtype == np.float64 else np.uint32)


# --------------------------------------------------------------------------- uninformative first gradients

SHAPES = {"a": (8, 16), "b": (7,), "bad": (4, 4), "c": ()}


def _gradient(kind: str, shape: tuple[int, ...], rng: np.random.Generator, offset: float) -> np.ndarray:
    g = rng.standard_normal(shape) + offset
    if kind == "zero":
        return np.zeros(shape)
    if kind in ("nan", "inf", "-inf"):
        g.reshape(-1)[3] = float(kind)
    return g


@dataclasses.dataclass(frozen=True)
class FirstGradientCase:
    desc: str
    preset: str
    bad: tuple[str, ...]  # the "bad" leaf's gradients at the first steps; normal ones follow
    first_informative: int  # 1-based step at which the bad leaf initializes (the reference agrees)
    lr: float = 1e-2
    weight_decay: float = 0.1
    momentum: float = 0.9  # 0: no buffer, the direction is the (NaN) gradient itself


FIRST_GRADIENT_CASES = [
    FirstGradientCase("NaN first, sgd-sai", "sgd-sai", ("nan",), 2),
    FirstGradientCase("NaN first, paper", "paper", ("nan",), 2, lr=0.5, weight_decay=1e-3),
    FirstGradientCase("NaN first, momentum 0 (no buffer)", "sgd-sai", ("nan",), 2, momentum=0.0),
    FirstGradientCase("inf then -inf, sgd-sai", "sgd-sai", ("inf", "-inf"), 3),
    FirstGradientCase("inf first, paper", "paper", ("inf",), 2, lr=0.5, weight_decay=1e-3),
    FirstGradientCase("all zero twice, sgd-sai", "sgd-sai", ("zero", "zero"), 3),
    FirstGradientCase("all zero first, paper", "paper", ("zero",), 2, lr=0.5, weight_decay=1e-3),
    # A port preset (zero_gradient="degenerate"): the zero gradient is a constant one and
    # initializes the leaf at once, with G = ||0|| / eps = 0, as the reference says.
    FirstGradientCase("all zero first, port sgd-sai-1.0.3 initializes", "sgd-sai-1.0.3", ("zero",), 1),
]


def _first_gradient_inputs(case: FirstGradientCase, dtype: Any) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(7)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    params["bad"].reshape(-1)[0] = -0.0  # p + 0.0 would turn it into +0.0: "untouched" means bit for bit
    offsets = {"a": 0.2, "b": 1.5, "bad": 0.7, "c": 0.0}
    grads = []
    for step in range(len(case.bad) + 2):
        kinds = {k: "normal" for k in SHAPES}
        if step < len(case.bad):
            kinds["bad"] = case.bad[step]
        grads.append({k: _gradient(kinds[k], s, rng, offsets[k]) for k, s in SHAPES.items()})
    as_dtype = lambda tree: {k: jnp.asarray(v, dtype) for k, v in tree.items()}  # noqa: E731
    return as_dtype(params), [as_dtype(g) for g in grads]


@pytest.mark.parametrize("jit", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FIRST_GRADIENT_CASES, ids=[c.desc for c in FIRST_GRADIENT_CASES])
def test_an_uninformative_first_gradient_affects_only_its_own_leaf(case, dtype, jit):
    tolerance = TOLERANCES[dtype]
    with jax.enable_x64(dtype == "float64"):
        params, grads = _first_gradient_inputs(case, jnp.dtype(dtype))
        hyper = {"momentum": case.momentum, "weight_decay": case.weight_decay, "preset": case.preset}
        full = _run(sai_jax.sgd_sai(case.lr, **hyper), params, grads, jit=jit)
        without = lambda tree: {k: v for k, v in tree.items() if k != "bad"}  # noqa: E731
        alone = _run(sai_jax.sgd_sai(case.lr, **hyper), without(params), [without(g) for g in grads], jit=jit)
        reference = _reference(params, grads, lr=case.lr, **hyper)

        bad = sorted(SHAPES).index("bad")
        first = next(t for t, (_, scales, _) in enumerate(reference, 1) if scales[bad] is not None)
        assert first == case.first_informative, "the table disagrees with the reference"
        for step, ((p, sai), (p_alone, sai_alone), (ref_params, ref_scales, ref_max)) in enumerate(
            zip(full, alone, reference), 1
        ):
            # Every other leaf, and M, exactly as in the run without the bad leaf.
            assert float(sai.max_gsnr) == float(sai_alone.max_gsnr), step
            for k in without(SHAPES):
                assert float(sai.scale[k]) == float(sai_alone.scale[k]), (step, k)
                assert bool(sai.initialized[k]) and bool(sai_alone.initialized[k])
                np.testing.assert_array_equal(p[k], p_alone[k])
                if case.momentum:
                    np.testing.assert_array_equal(sai.momentum_buffer[k], sai_alone.momentum_buffer[k])
            # No NaN / inf anywhere in the state.
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(sai) if x.dtype != jnp.bool_)
            # The bad leaf: flag as the reference's, untouched until its first informative gradient.
            assert bool(sai.initialized["bad"]) == (step >= first), step
            if step < first:
                np.testing.assert_array_equal(_bits(p["bad"]), _bits(params["bad"]))
                assert sai.momentum_buffer is None if not case.momentum else not jnp.any(sai.momentum_buffer["bad"])
                assert float(sai.scale["bad"]) == 0.0
            else:
                assert float(sai.scale["bad"]) == pytest.approx(ref_scales[bad], rel=tolerance.one_step, abs=1e-300)
            # And the whole trajectory against the float64 reference.
            assert float(sai.max_gsnr) == pytest.approx(ref_max, rel=tolerance.one_step)
            for index, k in enumerate(sorted(SHAPES)):
                scale = np.max(np.abs(ref_params[index]))
                error = np.max(np.abs(np.asarray(p[k], np.float64) - ref_params[index]))
                assert error <= tolerance.trajectory * scale + tolerance.tiny, (step, k, error / scale)


# --------------------------------------------------------------------------- overflow and underflow


@dataclasses.dataclass(frozen=True)
class MagnitudeCase:
    desc: str
    shape: tuple[int, ...]
    magnitude: float


MAGNITUDE_CASES = [
    MagnitudeCase("1e30: float32 squares overflow", (8, 16), 1e30),
    MagnitudeCase("1e-30: float32 squares underflow", (8, 16), 1e-30),
    MagnitudeCase("1e16 in a 2048x2048 leaf: the sum of squares overflows", (2048, 2048), 1e16),
]


@pytest.mark.parametrize("jit", MODES)
@pytest.mark.parametrize("preset", ["sgd-sai", "paper"])
@pytest.mark.parametrize("case", MAGNITUDE_CASES, ids=[c.desc for c in MAGNITUDE_CASES])
def test_extreme_float32_first_gradients_give_the_reference_scales(case, preset, jit):
    rng = np.random.default_rng(3)
    params = {"big": jnp.zeros(case.shape, jnp.float32), "other": jnp.zeros(7, jnp.float32)}
    first = {
        "big": jnp.asarray(case.magnitude * (rng.standard_normal(case.shape) + 0.5), jnp.float32),
        "other": jnp.asarray(rng.standard_normal(7) + 1.0, jnp.float32),
    }
    with np.errstate(over="ignore", under="ignore"):
        squares = np.sum(np.square(np.asarray(first["big"])))  # what the unscaled formula would see
    assert (not np.isfinite(squares)) if case.magnitude > 1 else squares == 0.0
    ((_, sai),) = _run(sai_jax.sgd_sai(1e-3, eps=0.0, preset=preset), params, [first], jit=jit)
    ((_, ref_scales, ref_max),) = _reference(params, [first], lr=1e-3, eps=0.0, preset=preset)
    rtol = TOLERANCES["float32"].one_step
    for index, k in enumerate(sorted(params)):
        assert np.isfinite(float(sai.scale[k])) and float(sai.scale[k]) > 0
        assert float(sai.scale[k]) == pytest.approx(ref_scales[index], rel=rtol), k
    assert float(sai.max_gsnr) == pytest.approx(ref_max, rel=rtol)


# --------------------------------------------------------------------------- zero-size leaves


@pytest.mark.parametrize("jit", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_zero_size_leaf_never_initializes_and_never_sets_m(dtype, jit):
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        rng = np.random.default_rng(5)
        params = {
            "empty": jnp.zeros((0,), dt),
            "w": jnp.asarray(rng.standard_normal((8, 16)), dt),
            "z": jnp.zeros((2, 0, 3), dt),
        }
        normal = jnp.asarray(rng.standard_normal((8, 16)) + 0.3, dt)
        grads = [
            {"empty": jnp.zeros((0,), dt), "w": jnp.zeros((8, 16), dt), "z": jnp.zeros((2, 0, 3), dt)},
            {"empty": jnp.zeros((0,), dt), "w": normal, "z": jnp.zeros((2, 0, 3), dt)},
        ]
        (p1, s1), (p2, s2) = _run(sai_jax.sgd_sai(preset="paper"), params, grads, jit=jit)
        # Step 1: the zero-size leaves have (empty) gradients, w an all-zero one: nothing
        # initializes, M stays unset.
        assert not any(bool(f) for f in jax.tree.leaves(s1.initialized))
        assert float(s1.max_gsnr) == 0.0
        np.testing.assert_array_equal(_bits(p1["w"]), _bits(params["w"]))
        # Step 2: w initializes; M is w's G alone, so its paper scale is exactly 1.
        assert [bool(s2.initialized[k]) for k in ("empty", "w", "z")] == [False, True, False]
        ((_, _, _), (_, ref_scales, ref_max)) = _reference(params, grads, preset="paper")
        assert float(s2.max_gsnr) == pytest.approx(ref_max, rel=TOLERANCES[dtype].one_step)
        assert float(s2.scale["w"]) == 1.0 == ref_scales[1]
        assert ref_scales[0] is None and ref_scales[2] is None


@pytest.mark.parametrize("jit", MODES)
def test_a_tree_of_zero_size_leaves_alone_never_branches(jit):
    params = {"empty": jnp.zeros((0, 4))}
    opt = sai_jax.sgd_sai()
    state = opt.init(params)
    jaxpr = jax.make_jaxpr(lambda g, s, p: opt.update(g, s, p))(params, state, params)
    assert "cond" not in {eqn.primitive.name for eqn in jaxpr.eqns}
    ((p, sai),) = _run(opt, params, [{"empty": jnp.zeros((0, 4))}], jit=jit)
    assert not bool(sai.initialized["empty"]) and float(sai.max_gsnr) == 0.0 and p["empty"].shape == (0, 4)


# --------------------------------------------------------------------------- weight decay of uninitialized leaves


def test_weight_decay_skips_uninitialized_leaves_only_in_sgd_sai():
    params = {"used": jnp.linspace(-1.0, 1.0, 6), "unused": jnp.asarray([2.0, -0.0, 3.0])}
    grads = {"used": jnp.linspace(0.5, 2.0, 6), "unused": jnp.asarray([0.0, jnp.nan, 0.0])}
    lr, wd = 0.01, 0.5
    builds: dict[str, Callable[[], Any]] = {
        "sgd_sai": lambda: sai_jax.sgd_sai(lr, weight_decay=wd),
        "sgd_sai_groups": lambda: sai_jax.sgd_sai_groups(
            {"x": {"learning_rate": lr, "weight_decay": wd}}, {"used": "x", "unused": "x"}
        ),
        "hand-built chain": lambda: optax.chain(
            sai_jax.scale_by_sai(), optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr)
        ),
    }
    out = {}
    for name, build in builds.items():
        opt = build()
        updates, state = opt.update(grads, opt.init(params), params)
        assert not bool(state[0].initialized["unused"])
        out[name] = optax.apply_updates(params, updates)
    for name in ("sgd_sai", "sgd_sai_groups"):
        np.testing.assert_array_equal(_bits(out[name]["unused"]), _bits(params["unused"]))
    # A hand-built chain with its own add_decayed_weights decays the uninitialized leaf (documented).
    np.testing.assert_allclose(out["hand-built chain"]["unused"], params["unused"] * (1 - lr * wd), rtol=1e-6)
    # scale_by_sai alone gives exactly 0 there, also for the NaN element, with a buffer or
    # without one (momentum 0: the direction is the NaN gradient itself).
    for momentum in (0.9, 0.0):
        tx = sai_jax.scale_by_sai(momentum)
        updates, _ = tx.update(grads, tx.init(params))
        assert updates["unused"].tolist() == [0.0, 0.0, 0.0], momentum


# --------------------------------------------------------------------------- compilation and cost


def _schedule(dtype: Any) -> tuple[dict, list[dict]]:
    """Five steps: "late" is NaN, then zero, then informative (step 3); the rest always informative."""
    rng = np.random.default_rng(11)
    shapes = {"w": (8, 16), "v": (7,), "late": (3, 4)}
    params = {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}
    grads = []
    for step in range(5):
        g = {k: rng.standard_normal(s) + 0.4 for k, s in shapes.items()}
        if step == 0:
            g["late"][0, 0] = np.nan
        if step == 1:
            g["late"] = np.zeros((3, 4))
        grads.append({k: jnp.asarray(v, dtype) for k, v in g.items()})
    return params, grads


@pytest.fixture
def counted_statistics(monkeypatch):
    """Counts raw_gsnr's traces (Python calls) and executions (a debug callback) per leaf."""
    traced, executed = [], []
    real = transform.raw_gsnr

    def counting(grad, **kwargs):
        traced.append(grad.shape)
        jax.debug.callback(lambda: executed.append(1))
        return real(grad, **kwargs)

    transform._initialization_branches.cache_clear()  # branches built with the counting function
    monkeypatch.setattr(transform, "raw_gsnr", counting)
    yield traced, executed
    transform._initialization_branches.cache_clear()  # drop them again after the test


@pytest.mark.parametrize("jit", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_run_only_while_a_leaf_waits_and_are_traced_once(counted_statistics, dtype, jit):
    traced, executed = counted_statistics
    with jax.enable_x64(dtype == "float64"):
        params, grads = _schedule(jnp.dtype(dtype))
        # optax.inject_hyperparams rebuilds sgd_sai at every update: the branches are still
        # traced once, eagerly as under jit.
        opt = optax.inject_hyperparams(sai_jax.sgd_sai)(learning_rate=0.01)
        step_traces = []

        def step(p, s, g):
            step_traces.append(1)
            updates, s = opt.update(g, s, p)
            return optax.apply_updates(p, updates), s

        step = jax.jit(step) if jit else step
        p, s = params, opt.init(params)
        per_step = []
        for g in grads:
            before = len(executed)
            p, s = step(p, s, g)
            jax.block_until_ready(p)
            jax.effects_barrier()
            per_step.append(len(executed) - before)
    # Statistics only for the leaves initializing at that step: w and b at step 1, "late" at its
    # first informative gradient (step 3; NaN at step 1, zeros at step 2); none afterwards.
    assert per_step == [2, 0, 1, 0, 0]
    assert len(traced) == 3
    if jit:
        assert len(step_traces) == 1  # no recompilation, also across the late initialization
    assert bool(s.inner_state[0].initialized["late"])
