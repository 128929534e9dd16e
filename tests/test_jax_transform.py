"""sai_jax's transformations: state layout, argument checks, the initialization branch, agreement
with the float64 reference (one group, parameter groups, masks, schedules) and unused parameters.
Deferred initialization (NaN, inf and zero first gradients, overflow, zero-size leaves) is tested in
tests/test_jax_initialization.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy

import sai_jax  # noqa: E402
from sai_conformance import load_cases  # noqa: E402
from sai_core import KNOB_VALUES, ReferenceSGDSaI, gsnr  # noqa: E402

# float64 against the float64 reference: both compute the same formulas, XLA and NumPy sum in
# different orders, which moves a reduction over <= 360 elements by ~n * 2**-53 = 4e-14; 1e-12
# (the conformance table's float64 one-step entry) leaves room for 5 steps.
RTOL64 = 1e-12


def _tree(shapes: dict[str, tuple[int, ...]], seed: int, dtype: Any = np.float64, offset: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(offset + rng.standard_normal(s), dtype) for k, s in shapes.items()}


SHAPES = {"bias": (7,), "kernel": (8, 16), "row": (1, 16), "scalar": (), "tensor": (3, 4, 5)}


def _sai_state(state: Any) -> sai_jax.ScaleBySaIState:
    (sai,) = [s for s in jax.tree.leaves(state, is_leaf=_is_sai) if _is_sai(s)]
    return sai


def _is_sai(node: Any) -> bool:
    return isinstance(node, sai_jax.ScaleBySaIState)


# --------------------------------------------------------------------------- state layout


@dataclasses.dataclass(frozen=True)
class LayoutCase:
    desc: str
    dtype: str
    kwargs: dict
    buffer_dtype: str | None  # None: no buffer at all
    stats_dtype: str


LAYOUTS = [
    LayoutCase("float32 defaults", "float32", {}, "float32", "float32"),
    LayoutCase("bfloat16 keeps a bfloat16 buffer, float32 statistics", "bfloat16", {}, "bfloat16", "float32"),
    LayoutCase(
        "bfloat16 with accumulator_dtype float32", "bfloat16", {"accumulator_dtype": jnp.float32}, "float32", "float32"
    ),
    LayoutCase("momentum 0 keeps no buffer", "float32", {"momentum": 0.0}, None, "float32"),
    LayoutCase("float64 under x64", "float64", {}, "float64", "float64"),
]


@pytest.mark.parametrize("case", LAYOUTS, ids=[c.desc for c in LAYOUTS])
def test_state_layout(case):
    with jax.enable_x64(case.dtype == "float64"):
        params = _tree(SHAPES, 0, jnp.dtype(case.dtype))
        state = sai_jax.scale_by_sai(**case.kwargs).init(params)
        assert state.count.dtype == jnp.int32 and state.count.shape == ()
        assert state.max_gsnr.dtype == jnp.dtype(case.stats_dtype) and state.max_gsnr.shape == ()
        assert jax.tree.structure(state.scale) == jax.tree.structure(params)
        assert {(s.shape, s.dtype) for s in jax.tree.leaves(state.scale)} == {((), jnp.dtype(case.stats_dtype))}
        if case.buffer_dtype is None:
            assert state.momentum_buffer is None
        else:
            assert jax.tree.map(lambda b: (b.shape, b.dtype), state.momentum_buffer) == jax.tree.map(
                lambda p: (p.shape, jnp.dtype(case.buffer_dtype)), params
            )


def test_per_leaf_momentum_drops_only_the_zero_leaves_buffer():
    params = _tree({"a": (3,), "b": (2, 2)}, 0, jnp.float32)
    state = sai_jax.scale_by_sai(momentum={"a": 0.0, "b": 0.9}).init(params)
    assert state.momentum_buffer["a"] is None and state.momentum_buffer["b"].shape == (2, 2)
    updates, state = sai_jax.scale_by_sai(momentum={"a": 0.0, "b": 0.9}).update(params, state)
    assert state.momentum_buffer["a"] is None


def test_state_bytes_are_parameter_bytes_plus_a_scalar_and_a_flag_per_leaf():
    params = _tree(SHAPES, 0, jnp.float32)
    state = sai_jax.sgd_sai(0.1).init(params)
    param_bytes = sum(p.nbytes for p in jax.tree.leaves(params))
    state_bytes = sum(s.nbytes for s in jax.tree.leaves(state))
    # momentum (= params) + one float32 scale and one bool flag per leaf + count and M (8 bytes)
    assert state_bytes == param_bytes + (4 + 1) * len(SHAPES) + 8
    assert {(f.shape, f.dtype) for f in jax.tree.leaves(state[0].initialized)} == {((), jnp.dtype(bool))}
    assert not any(bool(f) for f in jax.tree.leaves(state[0].initialized))


# --------------------------------------------------------------------------- argument checks


@dataclasses.dataclass(frozen=True)
class BadArgument:
    desc: str
    build: Callable[[], Any]
    error: type
    message: str  # a fragment of the message: the argument's name and the value


BAD_ARGUMENTS = [
    BadArgument("momentum 1", lambda: sai_jax.sgd_sai(0.1, momentum=1.0), ValueError, "Invalid momentum: 1.0"),
    BadArgument("negative momentum", lambda: sai_jax.scale_by_sai(momentum=-0.1), ValueError, "Invalid momentum: -0.1"),
    BadArgument("negative eps", lambda: sai_jax.sgd_sai(0.1, eps=-1e-8), ValueError, "Invalid eps: -1e-08"),
    BadArgument("negative learning rate", lambda: sai_jax.sgd_sai(-0.1), ValueError, "Invalid learning_rate: -0.1"),
    BadArgument("learning rate as text", lambda: sai_jax.sgd_sai("0.1"), ValueError, "Invalid learning_rate: '0.1'"),
    BadArgument(
        "nan weight decay",
        lambda: sai_jax.sgd_sai(0.1, weight_decay=float("nan")),
        ValueError,
        "Invalid weight_decay: nan",
    ),
    BadArgument(
        "weight decay as a tree",
        lambda: sai_jax.sgd_sai(0.1, weight_decay={"a": 0.1}),
        ValueError,
        "Invalid weight_decay: a pytree",
    ),
    BadArgument(
        "maximize as text", lambda: sai_jax.sgd_sai(0.1, maximize="yes"), ValueError, "Invalid maximize: 'yes'"
    ),
    BadArgument("unknown preset", lambda: sai_jax.sgd_sai(0.1, preset="adam"), ValueError, "Invalid preset: 'adam'"),
    BadArgument(
        "bad knob value", lambda: sai_jax.scale_by_sai(normalize="mean"), ValueError, "Invalid normalize: 'mean'"
    ),
    BadArgument("unknown keyword", lambda: sai_jax.sgd_sai(0.1, nesterov=True), TypeError, "nesterov"),
    BadArgument(
        "integer accumulator",
        lambda: sai_jax.scale_by_sai(accumulator_dtype=jnp.int32),
        ValueError,
        "Invalid accumulator_dtype: int32",
    ),
    BadArgument(
        "momentum array of shape (2,)",
        lambda: sai_jax.scale_by_sai(momentum=jnp.ones(2)),
        ValueError,
        "Invalid momentum: an array of shape (2,)",
    ),
    BadArgument("momentum None", lambda: sai_jax.scale_by_sai(momentum=None), ValueError, "Invalid momentum: None"),
    BadArgument("empty groups", lambda: sai_jax.sgd_sai_groups({}, []), ValueError, "Invalid groups: {}"),
    BadArgument(
        "group with a negative learning rate",
        lambda: sai_jax.sgd_sai_groups({"a": {"learning_rate": -0.5}}, ["a"]),
        ValueError,
        "groups['a']: Invalid learning_rate: -0.5",
    ),
    BadArgument(
        "group with an unknown key",
        lambda: sai_jax.sgd_sai_groups({"a": {"learning_rate": 0.1, "lr": 0.1}}, ["a"]),
        ValueError,
        "unknown key(s) ['lr']",
    ),
    BadArgument(
        "group with momentum 2",
        lambda: sai_jax.sgd_sai_groups({"a": {"learning_rate": 0.1, "momentum": 2.0}}, ["a"]),
        ValueError,
        "groups['a']: Invalid momentum: 2.0",
    ),
]


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=[c.desc for c in BAD_ARGUMENTS])
def test_invalid_arguments_raise_naming_argument_and_value(case):
    with pytest.raises(case.error) as info:
        case.build()
    assert case.message in str(info.value)


def test_defaults_come_from_sai_core_and_groups_share_them():
    # One place: sai_core.DEFAULT_HYPERPARAMETERS / DEFAULT_PRESET; sgd_sai() needs no argument.
    import inspect

    from sai_core import DEFAULT_HYPERPARAMETERS, DEFAULT_PRESET

    names = {"learning_rate": "lr", "momentum": "momentum", "weight_decay": "weight_decay", "eps": "eps"}
    for factory in (sai_jax.sgd_sai, sai_jax.scale_by_sai):
        signature = inspect.signature(factory).parameters
        for name, key in names.items():
            if name in signature:
                assert signature[name].default == DEFAULT_HYPERPARAMETERS[key], (factory, name)
        assert signature["preset"].default == DEFAULT_PRESET == "sgd-sai"
        assert signature["maximize"].default is DEFAULT_HYPERPARAMETERS["maximize"]
    assert inspect.signature(sai_jax.sgd_sai_groups).parameters["preset"].default == DEFAULT_PRESET
    params = _tree({"w": (8, 16), "b": (7,)}, 0, jnp.float32)
    grads = [_tree({"w": (8, 16), "b": (7,)}, seed, jnp.float32, offset=0.2) for seed in (1, 2, 3)]
    explicit = sai_jax.sgd_sai(1e-3, momentum=0.9, weight_decay=1e-2, eps=1e-8, preset="sgd-sai")
    results = []
    for opt in (sai_jax.sgd_sai(), explicit, sai_jax.sgd_sai_groups({"all": {}}, {"w": "all", "b": "all"})):
        p, state = params, opt.init(params)
        for g in grads:
            updates, state = opt.update(g, state, p)
            p = optax.apply_updates(p, updates)
        results.append(p)
    for other in results[1:]:
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), results[0], other))
    assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), results[0], params))


@dataclasses.dataclass(frozen=True)
class NonFloatLeaf:
    desc: str
    params: dict
    grads: dict | None  # None: init raises (a parameter); else update raises (a gradient)
    message: str


NON_FLOAT_LEAVES = [
    NonFloatLeaf(
        "integer parameter",
        {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)},
        None,
        "Invalid parameter at ['step']: dtype int32",
    ),
    NonFloatLeaf(
        "bool parameter",
        {"w": jnp.ones(3), "mask": jnp.ones(3, bool)},
        None,
        "Invalid parameter at ['mask']: dtype bool",
    ),
    NonFloatLeaf(
        "complex parameter", {"z": jnp.ones(3, jnp.complex64)}, None, "Invalid parameter at ['z']: dtype complex64"
    ),
    NonFloatLeaf(
        "float0 gradient (jax.grad of an integer input)",
        {"w": jnp.ones(3)},
        {"w": np.zeros(3, jax.dtypes.float0)},
        "Invalid gradient at ['w']: dtype [('float0', 'V')]",
    ),
    NonFloatLeaf(
        "integer gradient", {"w": jnp.ones(3)}, {"w": jnp.ones(3, jnp.int32)}, "Invalid gradient at ['w']: dtype int32"
    ),
]


@pytest.mark.parametrize("case", NON_FLOAT_LEAVES, ids=[c.desc for c in NON_FLOAT_LEAVES])
def test_a_leaf_that_is_not_real_floating_point_raises_naming_it(case):
    # SPEC step 0: checked before anything changes (dtypes are static: no cost under jit).
    opt = sai_jax.sgd_sai()
    with pytest.raises(ValueError) as info:
        state = opt.init(case.params)
        opt.update(case.grads, state, case.params)
    assert case.message in str(info.value)
    assert "real floating-point" in str(info.value)


def test_unknown_group_label_raises_at_init():
    opt = sai_jax.sgd_sai_groups({"a": {"learning_rate": 0.1}}, {"x": "a", "y": "b"})
    with pytest.raises(ValueError, match="label 'b' has no group"):
        opt.init({"x": jnp.ones(2), "y": jnp.ones(3)})


def test_per_leaf_tree_with_the_wrong_structure_raises_at_init():
    with pytest.raises(ValueError, match="Invalid momentum: a tree whose structure"):
        sai_jax.scale_by_sai(momentum={"a": 0.9, "c": 0.9}).init({"a": jnp.ones(2), "b": jnp.ones(2)})


def test_update_with_a_momentum_the_state_was_not_built_for_raises():
    params = {"w": jnp.ones((2, 2))}
    state = sai_jax.scale_by_sai(momentum=0.0).init(params)
    with pytest.raises(ValueError, match="Invalid momentum: 0.9 for leaf 0, whose state has no momentum buffer"):
        sai_jax.scale_by_sai(momentum=0.9).update(params, state)


# --------------------------------------------------------------------------- the first-step branch


def _primitives(jaxpr: Any, where: tuple[str, ...] = ()) -> list[tuple[str, tuple[str, ...], Any]]:
    """Every primitive of a jaxpr with the cond branches it sits in (nested jaxprs included) and
    its first operand's abstract value."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            for index, branch in enumerate(eqn.params["branches"]):
                found += _primitives(branch.jaxpr, where + (f"cond branch {index}",))
            continue
        found.append((eqn.primitive.name, where, eqn.invars[0].aval if eqn.invars else None))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _primitives(inner, where)
    return found


@pytest.mark.parametrize("preset", ["sgd-sai", "paper", "pytorch-optimizer-4"])
def test_statistics_are_computed_only_inside_the_initialization_branch(preset):
    # lax.cond(pred, true, false) stores its branches as (false, true): branch 1 runs while some
    # leaf is uninitialized. Every reduction over a gradient (the informativeness checks, the
    # g-SNR's sums, max and min, and M) must sit there, so that the compiled steady-state step
    # contains no statistics at all (tests/test_jax_initialization.py checks that it does not
    # execute them). Outside, the only reduction is the predicate: all() over the leaves' flags.
    # Inside, each leaf has a cond on its own flag (branch 0: the leaf waits), and its g-SNR sits
    # in a further cond on its informativeness (branch 1), so a waiting leaf costs only its check.
    params = _tree(SHAPES, 0, jnp.float32)
    opt = sai_jax.sgd_sai(0.1, preset=preset)
    state = opt.init(params)
    jaxpr = jax.make_jaxpr(lambda g, s, p: opt.update(g, s, p))(params, state, params)
    reductions = [(name, where, aval) for name, where, aval in _primitives(jaxpr.jaxpr) if name.startswith("reduce_")]
    inside = [(name, where, aval) for name, where, aval in reductions if where[:1] == ("cond branch 1",)]
    outside = [(name, where, aval) for name, where, aval in reductions if where[:1] != ("cond branch 1",)]
    assert {name for name, _, _ in inside} >= {"reduce_sum", "reduce_max", "reduce_min"}
    assert any(aval.shape == (8, 16) for _, _, aval in inside)  # the kernel's own statistics
    statistics = ("cond branch 1", "cond branch 0", "cond branch 1")
    sums_over_kernel = [where for name, where, aval in inside if name == "reduce_sum" and aval.shape == (8, 16)]
    assert sums_over_kernel and all(where[:3] == statistics for where in sums_over_kernel)
    assert [(name, where, aval.shape, aval.dtype) for name, where, aval in outside] == [
        ("reduce_and", (), (len(SHAPES),), jnp.dtype(bool))
    ]


@pytest.mark.parametrize("preset", ["sgd-sai", "paper"])
def test_scales_and_max_are_frozen_after_the_first_update(preset):
    params = _tree(SHAPES, 0, jnp.float32)
    opt = sai_jax.sgd_sai(0.1, preset=preset)
    state = opt.init(params)
    first = _tree(SHAPES, 1, jnp.float32, offset=0.5)
    _, state = opt.update(first, state, params)
    frozen = _sai_state(state)
    for seed in (2, 3):  # very different statistics later: scale 1e3, offset 5
        later = jax.tree.map(lambda g: 1e3 * g, _tree(SHAPES, seed, jnp.float32, offset=5.0))
        _, state = opt.update(later, state, params)
    now = _sai_state(state)
    assert int(now.count) == 3
    assert float(now.max_gsnr) == float(frozen.max_gsnr)
    assert jax.tree.map(float, now.scale) == jax.tree.map(float, frozen.scale)
    expected = {k: float(gsnr(np.asarray(g, np.float64))) for k, g in first.items()}
    top = max(expected.values())
    assert float(now.max_gsnr) == pytest.approx(top, rel=4e-6)  # recorded under every preset
    divisor = top if preset == "paper" else 1.0  # "sgd-sai": S = G, "paper": S = G / M
    for k, s in now.scale.items():
        assert float(s) == pytest.approx(expected[k] / divisor, rel=4e-6)  # float32 statistics


# --------------------------------------------------------------------------- against the reference


@dataclasses.dataclass(frozen=True)
class ReferenceCase:
    desc: str
    kwargs: dict  # sgd_sai keyword arguments (a float learning rate is the reference's lr)
    lrs: tuple[float, ...] = (0.05,) * 5


REFERENCE_CASES = [
    ReferenceCase("defaults (preset sgd-sai)", {}, lrs=(1e-3,) * 5),
    ReferenceCase("preset paper", {"preset": "paper", "momentum": 0.9, "weight_decay": 1e-3}),
    ReferenceCase("momentum 0, maximize", {"momentum": 0.0, "weight_decay": 0.1, "maximize": True}),
    ReferenceCase("momentum 0.99, eps 1e-3", {"momentum": 0.99, "weight_decay": 0.0, "eps": 1e-3}),
    ReferenceCase("schedule with a zero-lr step", {"momentum": 0.9}, lrs=(0.05, 0.0, 0.02, 0.1, 0.01)),
    *[
        ReferenceCase(f"preset {name}", {"preset": name}, lrs=(1e-3,) * 5)
        for name in ("sgd-sai-1.0.3", "sgd-sai-1.0.4", "sgd-sai-1.1.0", "pytorch-optimizer-4")
    ],
    ReferenceCase(
        "knob overrides",
        {"std_correction": 0, "momentum_init": "zeros", "vector_rule": "norm", "zero_gradient": "degenerate"},
    ),
]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=[c.desc for c in REFERENCE_CASES])
def test_sgd_sai_matches_the_reference_in_float64(case):
    with jax.enable_x64(True):
        params = _tree(SHAPES, 0)
        grads = [_tree(SHAPES, 10 + step, offset=0.3 * step) for step in range(len(case.lrs))]
        lrs = jnp.asarray(case.lrs)
        lr = case.lrs[0] if len(set(case.lrs)) == 1 else (lambda count: lrs[count])
        opt = sai_jax.sgd_sai(lr, **case.kwargs)
        state = opt.init(params)
        step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*opt.update(g, s, p)))
        knobs = {k: v for k, v in case.kwargs.items() if k == "preset" or k in KNOB_VALUES}
        hyper = {k: v for k, v in case.kwargs.items() if k not in knobs}
        reference = ReferenceSGDSaI(jax.tree.leaves(params), lr=case.lrs[0], **hyper, **knobs)
        for g, lr_now in zip(grads, case.lrs):
            params, state = step(params, state, g)
            reference.param_groups[0]["lr"] = lr_now
            reference.step([np.asarray(x) for x in jax.tree.leaves(g)])
        sai = _sai_state(state)
        for got, want in zip(jax.tree.leaves(params), reference.params):
            np.testing.assert_allclose(got, want, rtol=RTOL64, atol=1e-300)
        np.testing.assert_allclose(
            [float(s) for s in jax.tree.leaves(sai.scale)], [float(s) for s in reference.scale], rtol=RTOL64
        )
        assert float(sai.max_gsnr) == pytest.approx(float(reference.max_gsnr), rel=RTOL64)
        if sai.momentum_buffer is None:
            assert all(b is None for b in reference.momentum_buffer)
        else:
            for got, want in zip(jax.tree.leaves(sai.momentum_buffer), reference.momentum_buffer):
                np.testing.assert_allclose(got, want, rtol=RTOL64, atol=1e-300)


@pytest.mark.parametrize("name", ["two_groups-sgd-sai-float64", "two_groups-paper-float64"])
def test_groups_reproduce_the_reference_two_group_golden_case(name):
    # The reference's two-group case, expressed the JAX way: a dict of named parameters and a
    # label function; the groups differ in lr, momentum (0: no buffer), weight decay and eps.
    (case,) = [c for c in load_cases() if c.name == name]
    names = ["a_matrix", "b_vector", "c_column", "d_row"]  # sorted, so leaf order = block order
    group_of = {names[block]: f"group{index}" for index, g in enumerate(case.groups) for block in g.params}
    groups = {
        f"group{index}": {
            "learning_rate": h["lr"],
            "momentum": h["momentum"],
            "weight_decay": h["weight_decay"],
            "eps": h["eps"],
            "maximize": h["maximize"],
        }
        for index, h in enumerate(case.hyper_at(0))
    }
    assert all(case.hyper_at(step) == case.hyper_at(0) for step in range(case.num_steps))
    with jax.enable_x64(True):
        opt = sai_jax.sgd_sai_groups(groups, lambda tree: {k: group_of[k] for k in tree}, preset=case.preset)
        params = dict(zip(names, map(jnp.asarray, case.initial_params)))
        state = opt.init(params)
        for step, expected in enumerate(case.expected):
            grads = dict(zip(names, map(jnp.asarray, case.grads[step])))
            updates, state = opt.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            sai = _sai_state(state)
            for block, name in enumerate(names):
                np.testing.assert_allclose(params[name], expected.params[block], rtol=RTOL64, atol=1e-300)
                assert float(sai.scale[name]) == pytest.approx(expected.scale[block], rel=RTOL64)
                if expected.momentum_buffer[block] is None:
                    assert sai.momentum_buffer[name] is None
                else:
                    np.testing.assert_allclose(sai.momentum_buffer[name], expected.momentum_buffer[block], rtol=RTOL64)
            assert float(sai.max_gsnr) == pytest.approx(expected.max_gsnr, rel=RTOL64)


def test_groups_with_maximize_eps_and_schedules_match_the_reference_in_float64():
    # Per-group maximize, eps and momentum 0 travel as per-leaf values into scale_by_sai; the
    # per-group learning-rate schedules and weight decays into optax.partition.
    shapes = {"a": (8, 16), "b": (7,), "c": (1, 16), "d": ()}
    labels = {"a": "up", "b": "up", "c": "down", "d": "down"}
    up_lrs, down_lrs = (0.02, 0.0, 0.05, 0.01), (0.1, 0.05, 0.0, 0.2)
    settings = {
        "up": {"momentum": 0.0, "weight_decay": 0.1, "eps": 1e-3, "maximize": True},
        "down": {"momentum": 0.9, "weight_decay": 0.0, "eps": 1e-8, "maximize": False},
    }
    with jax.enable_x64(True):
        tables = {"up": jnp.asarray(up_lrs), "down": jnp.asarray(down_lrs)}
        schedules = {k: (lambda table: lambda count: table[count])(table) for k, table in tables.items()}
        opt = sai_jax.sgd_sai_groups({k: {"learning_rate": schedules[k], **v} for k, v in settings.items()}, labels)
        params = _tree(shapes, 0)
        state = opt.init(params)
        names = sorted(shapes)
        groups = [
            {"params": [params[n] for n in names if labels[n] == label], "lr": lrs[0], **settings[label]}
            for label, lrs in (("up", up_lrs), ("down", down_lrs))
        ]
        reference = ReferenceSGDSaI([{**g, "params": [np.asarray(p) for p in g["params"]]} for g in groups])
        order = [n for n in names if labels[n] == "up"] + [n for n in names if labels[n] == "down"]
        for step in range(4):
            grads = _tree(shapes, 20 + step, offset=0.5)
            updates, state = opt.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            reference.param_groups[0]["lr"], reference.param_groups[1]["lr"] = up_lrs[step], down_lrs[step]
            reference.step([np.asarray(grads[n]) for n in order])
        for index, name in enumerate(order):
            np.testing.assert_allclose(params[name], reference.params[index], rtol=RTOL64, atol=1e-300)
            assert float(_sai_state(state).scale[name]) == pytest.approx(float(reference.scale[index]), rel=RTOL64)


def test_groups_share_one_normaliser_unlike_separate_partitioned_optimizers():
    params = _tree({"big": (8, 16), "small": (7,)}, 0, jnp.float32)
    grads = _tree({"big": (8, 16), "small": (7,)}, 1, jnp.float32, offset=0.5)
    labels = {"big": "a", "small": "b"}
    grouped = sai_jax.sgd_sai_groups({"a": {"learning_rate": 0.1}, "b": {"learning_rate": 0.1}}, labels, preset="paper")
    _, state = grouped.update(grads, grouped.init(params), params)
    raw = {k: float(gsnr(np.asarray(g, np.float64))) for k, g in grads.items()}
    scales = _sai_state(state).scale
    assert float(scales["big"]) == pytest.approx(raw["big"] / max(raw.values()), rel=4e-6)
    assert float(scales["small"]) == pytest.approx(raw["small"] / max(raw.values()), rel=4e-6)
    # optax.partition over two sgd_sai instances normalises each group by its own maximum: both
    # scales become 1. This is what sgd_sai_groups exists to avoid.
    separate = optax.partition(
        {"a": sai_jax.sgd_sai(0.1, preset="paper"), "b": sai_jax.sgd_sai(0.1, preset="paper")}, labels
    )
    _, separate_state = separate.update(grads, separate.init(params), params)
    sai_states = [s for s in jax.tree.leaves(separate_state, is_leaf=_is_sai) if _is_sai(s)]
    separate_scales = [float(scale) for sai in sai_states for scale in jax.tree.leaves(sai.scale)]
    assert separate_scales == [1.0, 1.0]
    assert float(scales["small"]) < 1.0 or float(scales["big"]) < 1.0


def test_weight_decay_mask_skips_masked_leaves():
    params = _tree({"w": (4, 4), "b": (4,)}, 0, jnp.float32)
    grads = _tree({"w": (4, 4), "b": (4,)}, 1, jnp.float32)
    masked = sai_jax.sgd_sai(0.1, weight_decay=0.5, mask={"w": True, "b": False})
    decayed = sai_jax.sgd_sai(0.1, weight_decay=0.5)
    undecayed = sai_jax.sgd_sai(0.1, weight_decay=0.0)
    out = {}
    for name, opt in (("masked", masked), ("decayed", decayed), ("undecayed", undecayed)):
        updates, _ = opt.update(grads, opt.init(params), params)
        out[name] = updates
    np.testing.assert_array_equal(out["masked"]["w"], out["decayed"]["w"])
    np.testing.assert_array_equal(out["masked"]["b"], out["undecayed"]["b"])


# --------------------------------------------------------------------------- unused parameters


@dataclasses.dataclass(frozen=True)
class UnusedCase:
    desc: str
    preset: str
    initializes: bool  # whether the all-zero gradient initializes the leaf


UNUSED_CASES = [
    # zero_gradient="defer": an all-zero gradient is not informative; the leaf waits, untouched.
    UnusedCase("sgd-sai waits untouched", "sgd-sai", False),
    UnusedCase("paper waits untouched", "paper", False),
    # The authors' release (zero_gradient="degenerate"): ||g|| / eps = 0, a scale of 0 forever,
    # and only the weight decay moves the tensor, as in the port.
    UnusedCase("sgd-sai-1.0.3 freezes the scale at 0 and decays", "sgd-sai-1.0.3", True),
]


@pytest.mark.parametrize("case", UNUSED_CASES, ids=[c.desc for c in UNUSED_CASES])
def test_an_unused_parameter_gets_zero_gradients(case):
    # JAX has no absent gradient: a parameter the loss does not use gets exact zeros.
    params = {
        "used": jnp.asarray(np.linspace(-1.0, 2.0, 12).reshape(3, 4), jnp.float32),
        "unused": jnp.ones(9, jnp.float32),
    }

    def loss(p):
        return jnp.sum((p["used"] - 0.5) ** 2)

    opt = sai_jax.sgd_sai(0.01, weight_decay=0.2, preset=case.preset)
    state = opt.init(params)
    first_grad = jax.grad(loss)(params)
    for _ in range(3):
        grads = jax.grad(loss)(params)
        assert not jnp.any(grads["unused"])
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    sai = _sai_state(state)
    assert not jnp.any(sai.momentum_buffer["unused"])
    assert bool(sai.initialized["used"]) and bool(sai.initialized["unused"]) == case.initializes
    # M is the used leaf's G (the only one initialized at step 1, or a larger one than 0).
    top = float(gsnr(np.asarray(first_grad["used"], np.float64), preset=case.preset))
    assert float(sai.max_gsnr) == pytest.approx(top, rel=4e-6)
    if case.initializes:
        np.testing.assert_allclose(params["unused"], np.full(9, (1 - 0.01 * 0.2) ** 3), rtol=1e-6)
        assert float(sai.scale["unused"]) == 0.0
    else:
        np.testing.assert_array_equal(params["unused"], np.ones(9, np.float32))
        assert float(sai.scale["unused"]) == 0.0  # unset
        # The first nonzero gradient initializes it, with the frozen M under "paper".
        late = {"used": jnp.zeros((3, 4), jnp.float32), "unused": jnp.asarray(np.linspace(0.5, 2.5, 9), jnp.float32)}
        _, state = opt.update(late, state, params)
        sai = _sai_state(state)
        assert bool(sai.initialized["unused"])
        expected = float(gsnr(np.asarray(late["unused"], np.float64), preset=case.preset))
        divisor = top if case.preset == "paper" else 1.0
        assert float(sai.scale["unused"]) == pytest.approx(expected / divisor, rel=4e-6)
        assert float(sai.max_gsnr) == pytest.approx(top, rel=4e-6)


def test_values_returned_by_a_per_leaf_callable_are_checked_at_init():
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match="Invalid eps: -1.0"):
        sai_jax.scale_by_sai(eps=lambda p: {"a": 1e-8, "b": -1.0}).init(params)
    with pytest.raises(ValueError, match="Invalid maximize: 1 "):
        sai_jax.scale_by_sai(maximize=lambda p: {"a": True, "b": 1}).init(params)
