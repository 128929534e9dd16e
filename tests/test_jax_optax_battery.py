"""The optax battery: one table of sai_jax optimizers under test, run through the same checks.

jit without recompilation, dtype preservation (bfloat16 / float32), ``optax.inject_hyperparams``
equivalence, ``optax.MultiSteps`` and convergence on a toy problem (STYLE.md, "optax").
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


@dataclasses.dataclass(frozen=True)
class OptimizerCase:
    """An optimizer under test: how to build it, and how many steps it needs on the toy problem."""

    desc: str
    make: Callable[[], Any]
    toy_steps: int = 400

    def __str__(self) -> str:
        return self.desc


def _labels(params: dict) -> dict:
    return {"w": "matrices", "b": "vectors"}


# Learning rates under the default preset "sgd-sai" are in the authors' units (a leaf's step is
# about lr * sqrt(n) times its momentum); under "paper" the same run needs lr * M and wd / M (M is
# about 5.6 on this problem).
OPTIMIZERS = [
    OptimizerCase("sgd_sai with no arguments (lr 1e-3, preset sgd-sai)", lambda: sai_jax.sgd_sai(), toy_steps=1500),
    OptimizerCase("sgd_sai lr 0.03", lambda: sai_jax.sgd_sai(0.03)),
    OptimizerCase("sgd_sai momentum 0 (no buffer)", lambda: sai_jax.sgd_sai(0.03, momentum=0.0)),
    OptimizerCase(
        "sgd_sai no weight decay, momentum 0.95", lambda: sai_jax.sgd_sai(0.03, momentum=0.95, weight_decay=0.0)
    ),
    OptimizerCase(
        "sgd_sai preset paper (lr * M, wd / M)",
        lambda: sai_jax.sgd_sai(0.3, weight_decay=1e-3, preset="paper"),
    ),
    OptimizerCase(
        "sgd_sai preset pytorch-optimizer-4",
        lambda: sai_jax.sgd_sai(0.01, preset="pytorch-optimizer-4"),
    ),
    OptimizerCase(
        "sgd_sai cosine schedule and a weight-decay mask",
        lambda: sai_jax.sgd_sai(
            optax.cosine_decay_schedule(0.03, 400), weight_decay=0.02, mask={"w": True, "b": False}
        ),
    ),
    OptimizerCase(
        "sgd_sai_groups with a label function",
        lambda: sai_jax.sgd_sai_groups(
            {"matrices": {"learning_rate": 0.03}, "vectors": {"momentum": 0.0, "weight_decay": 0.0}},
            _labels,
        ),
    ),
    OptimizerCase(
        "scale_by_sai chained with optax.scale_by_learning_rate",
        lambda: optax.chain(sai_jax.scale_by_sai(), optax.scale_by_learning_rate(0.03)),
    ),
]

IDS = [case.desc for case in OPTIMIZERS]


def _problem(dtype: Any = jnp.float32) -> tuple[dict, Callable[[dict], jax.Array]]:
    """Least squares, y = X w* + b*, with a (8, 4) matrix and a (4,) bias."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 8)), dtype)
    w_true = rng.standard_normal((8, 4))
    y = jnp.asarray(np.asarray(x, np.float64) @ w_true + 0.5, dtype)
    params = {"w": jnp.zeros((8, 4), dtype), "b": jnp.zeros(4, dtype)}

    def loss(p: dict) -> jax.Array:
        return jnp.mean((x @ p["w"] + p["b"] - y).astype(jnp.float32) ** 2)

    return params, loss


def _run(opt: Any, params: dict, loss: Callable, steps: int) -> tuple[dict, Any]:
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


@pytest.mark.parametrize("case", OPTIMIZERS, ids=IDS)
def test_jit_does_not_recompile_on_the_second_call(case):
    # The first call (count == 0, statistics branch taken) and later calls share one trace: the
    # state the update returns has exactly the avals (dtype, weak type) of the one init returns.
    opt = case.make()
    params, loss = _problem()
    traces = []

    def step(params, state):
        traces.append(1)
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step)
    state = opt.init(params)
    for _ in range(3):
        params, state = jitted(params, state)
    assert len(traces) == 1


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=IDS)
def test_dtypes_are_preserved(case, dtype):
    opt = case.make()
    params, loss = _problem(jnp.dtype(dtype))
    state = opt.init(params)
    grads = jax.grad(lambda p: loss(p).astype(jnp.float32))(params)
    updates, new_state = opt.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    for tree in (updates, new_params):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(dtype)}
    # The whole state keeps its dtypes; SaI's momentum stays in the parameter dtype and its
    # statistics in float32.
    assert jax.tree.map(lambda a: a.dtype, new_state) == jax.tree.map(lambda a: a.dtype, state)
    (sai,) = [s for s in jax.tree.leaves(new_state, is_leaf=_is_sai) if _is_sai(s)]
    if sai.momentum_buffer is not None:
        assert {b.dtype for b in jax.tree.leaves(sai.momentum_buffer)} == {jnp.dtype(dtype)}
    assert {s.dtype for s in jax.tree.leaves(sai.scale)} == {jnp.dtype("float32")}
    assert sai.max_gsnr.dtype == jnp.float32


def _is_sai(node: Any) -> bool:
    return isinstance(node, sai_jax.ScaleBySaIState)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=IDS)
def test_converges_on_a_toy_problem(case):
    params, loss = _problem()
    start = float(loss(params))
    params, _ = _run(case.make(), params, loss, case.toy_steps)
    assert float(loss(params)) < 1e-2 * start


INJECT_SETTINGS = [
    pytest.param(dict(), id="no arguments"),
    pytest.param(dict(learning_rate=0.01), id="learning rate only"),
    pytest.param(
        dict(learning_rate=0.005, momentum=0.5, weight_decay=0.1, eps=1e-6), id="every numeric hyperparameter"
    ),
    pytest.param(dict(learning_rate=optax.linear_schedule(0.01, 0.0, 5)), id="learning-rate schedule"),
    pytest.param(dict(learning_rate=0.01, preset="sgd-sai-1.0.3", maximize=True), id="static preset and maximize"),
    pytest.param(dict(learning_rate=0.05, preset="paper", weight_decay=1e-3), id="preset paper"),
    pytest.param(dict(learning_rate=0.01, std_correction=0, momentum_init="zeros"), id="knob overrides"),
]


@pytest.mark.parametrize("settings", INJECT_SETTINGS)
def test_inject_hyperparams_is_equivalent(settings):
    # Same float32 arithmetic either way (Python floats are weakly typed and round to float32
    # exactly as the injected float32 arrays are), so the results agree bit for bit.
    params, loss = _problem()
    plain, _ = _run(sai_jax.sgd_sai(**settings), params, loss, 6)
    injected, state = _run(optax.inject_hyperparams(sai_jax.sgd_sai)(**settings), params, loss, 6)
    assert jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), plain, injected) == {"w": True, "b": True}
    assert set(state.hyperparams) >= {"learning_rate", "momentum", "weight_decay", "eps"}


def test_inject_hyperparams_injects_the_defaults():
    params, _ = _problem()
    state = optax.inject_hyperparams(sai_jax.sgd_sai)().init(params)
    values = {k: float(v) for k, v in state.hyperparams.items()}
    assert values == pytest.approx({"learning_rate": 1e-3, "momentum": 0.9, "weight_decay": 1e-2, "eps": 1e-8})


def test_inject_hyperparams_reads_the_learning_rate_at_every_step():
    params, loss = _problem()
    opt = optax.inject_hyperparams(sai_jax.sgd_sai)(learning_rate=0.01, weight_decay=0.0)
    state = opt.init(params)
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    assert all(not jnp.any(u) for u in jax.tree.leaves(updates))


def test_multisteps_applies_the_mean_gradient_every_k_steps():
    params, loss = _problem()
    rng = np.random.default_rng(1)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params) for _ in range(4)]
    multi = optax.MultiSteps(sai_jax.sgd_sai(0.01), every_k_schedule=2)
    plain = sai_jax.sgd_sai(0.01)
    multi_params, multi_state = params, multi.init(params)
    for g in grads:
        updates, multi_state = multi.update(g, multi_state, multi_params)
        multi_params = optax.apply_updates(multi_params, updates)
    plain_params, plain_state = params, plain.init(params)
    for g1, g2 in (grads[:2], grads[2:]):
        mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
        updates, plain_state = plain.update(mean, plain_state, plain_params)
        plain_params = optax.apply_updates(plain_params, updates)
    # MultiSteps averages incrementally (acc + (g - acc) / k), (a + b) / 2 rounds differently:
    # a few float32 units (2**-24 = 6e-8) on the gradient, hence 1e-6.
    for a, b in zip(jax.tree.leaves(multi_params), jax.tree.leaves(plain_params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(multi_state.inner_opt_state[0].count) == 2


def _shapes_of(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.shape, tree)


@pytest.mark.parametrize(
    "make, buffer",
    [
        pytest.param(lambda: sai_jax.sgd_sai(), True, id="sgd_sai defaults"),
        pytest.param(lambda: sai_jax.sgd_sai(momentum=0.0), False, id="sgd_sai momentum 0"),
        pytest.param(lambda: optax.inject_hyperparams(sai_jax.sgd_sai)(), True, id="inject_hyperparams"),
        # An injected momentum is an array, unknown at trace time: a buffer is kept even for 0,
        # so this state's structure differs from the plain momentum-0 one (docs/jax.md) ...
        pytest.param(
            lambda: optax.inject_hyperparams(sai_jax.sgd_sai)(momentum=0.0), True, id="inject_hyperparams momentum 0"
        ),
        # ... unless the momentum is static: then it is the plain structure.
        pytest.param(
            lambda: optax.inject_hyperparams(sai_jax.sgd_sai, static_args=("momentum",))(momentum=0.0),
            False,
            id="inject_hyperparams static momentum 0",
        ),
        pytest.param(
            lambda: sai_jax.sgd_sai_groups({"a": {}, "b": {"momentum": 0.5}}, {"w": "a", "b": "b"}),
            True,
            id="sgd_sai_groups",
        ),
        pytest.param(
            lambda: sai_jax.sgd_sai_groups({"a": {"momentum": 0.0}, "b": {}}, {"w": "a", "b": "a"}),
            False,
            id="sgd_sai_groups, every used group momentum 0",
        ),
    ],
)
def test_tree_map_params_maps_every_parameter_shaped_field(make, buffer):
    # optax.tree_map_params initializes the optimizer with a placeholder (a tree without leaves)
    # and matches its state against the real one: their structures must agree. Only the momentum
    # buffer is a copy of the parameters; the per-leaf scalar scales and flags go, whole, to
    # transform_non_params with count and M (a parameter's sharding would not fit a scalar).
    params, _ = _problem()
    opt = make()
    state = opt.init(params)
    specs = {"w": "spec of w", "b": "spec of b"}
    # optax's recipe, as documented for optax.tree_map_params: f returns the parameter's spec.
    mapped = optax.tree_map_params(opt, lambda _, spec: spec, state, specs, transform_non_params=lambda _: "other")
    (sai,) = [s for s in jax.tree.leaves(mapped, is_leaf=_is_sai) if _is_sai(s)]
    assert sai.momentum_buffer == (specs if buffer else None)
    assert sai.scale == sai.initialized == sai.count == sai.max_gsnr == "other"
    shapes = optax.tree_map_params(opt, lambda leaf: leaf.shape, state)
    (sai,) = [s for s in jax.tree.leaves(shapes, is_leaf=_is_sai) if _is_sai(s)]
    assert sai.momentum_buffer == ({"w": (8, 4), "b": (4,)} if buffer else None)
    assert jax.tree.structure(sai.scale) == jax.tree.structure(params)  # unchanged: not mapped


def test_tree_map_params_with_a_momentum_0_group_needs_is_leaf_for_its_none_buffers():
    # A group with momentum 0 keeps no buffer: its leaves are None in the buffer tree. As for
    # optax's masked states, pass is_leaf so that f sees them (docs/jax.md).
    params, _ = _problem()
    opt = sai_jax.sgd_sai_groups({"a": {}, "b": {"momentum": 0.0}}, {"w": "a", "b": "b"})
    state = opt.init(params)
    specs = {"w": "spec of w", "b": "spec of b"}
    mapped = optax.tree_map_params(
        opt, lambda _, spec: spec, state, specs, transform_non_params=lambda _: "other", is_leaf=lambda x: x is None
    )
    (sai,) = [s for s in jax.tree.leaves(mapped, is_leaf=_is_sai) if _is_sai(s)]
    assert sai.momentum_buffer == specs
