"""``sai_jax.sgd_sai`` as the transformation of a Flax NNX ``nnx.Optimizer``.

``nnx.Optimizer(model, sgd_sai(...), wrt=nnx.Param)`` must be the optax optimizer, unchanged:
the same updates and state as ``sgd_sai``'s ``update`` on the model's parameter pytree, to the
bit. Its state (scales, ``M``, flags, buffers) is NNX state: ``nnx.state`` / ``nnx.update`` carry
it, and a run continued from that state equals the uninterrupted one exactly. docs/jax.md
("Flax NNX") has the training-loop example, run by tests/test_jax_docs.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("flax")
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sai_jax import sgd_sai


class MLP(nnx.Module):
    """4 -> 16 -> 1, GELU: two matrices, a 16-element and a 1-element bias."""

    def __init__(self, rngs: Any) -> None:
        self.hidden = nnx.Linear(4, 16, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        return self.out(jax.nn.gelu(self.hidden(x)))


def _data() -> tuple[Any, Any]:
    x = jax.random.normal(jax.random.key(1), (64, 4))
    return x, jnp.sin(2.0 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]


def _loss(model: MLP, x: Any, y: Any) -> Any:
    return jnp.mean((model(x) - y) ** 2)


def _as_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def _max_abs_difference(a: Any, b: Any) -> float:
    """Largest elementwise difference over two pytrees with the same leaves (in float64)."""
    left, right = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(left) == len(right) and [np.shape(x) for x in left] == [np.shape(y) for y in right]
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
        for x, y in zip(left, right)
    )


@nnx.jit
def _train_step(model: MLP, optimizer: Any, x: Any, y: Any) -> Any:
    """One compiled step; returns the gradients it applied (one compilation for every test)."""
    grads = nnx.grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return grads


def test_nnx_optimizer_is_the_optax_optimizer_to_the_bit() -> None:
    x, y = _data()
    tx = sgd_sai(learning_rate=1e-2)
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))  # what a plain optax loop would hold
    opt_state = tx.init(params)

    @jax.jit
    def optax_apply(grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(4):  # the plain loop applies the gradient the NNX step computed and applied
        grads = _train_step(model, optimizer, x, y)
        params, opt_state = optax_apply(nnx.to_pure_dict(grads), opt_state, params)
        assert _max_abs_difference(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params) == 0.0
    nnx_sai_state = nnx.to_pure_dict(nnx.state(optimizer))["opt_state"][0]
    assert _max_abs_difference(nnx_sai_state, opt_state[0]._asdict()) == 0.0
    # The state holds the g-SNRs of the first gradient. ||g||^2 = (n-1) s^2 + n mean^2, so
    # G >= sqrt(n - 1) for every non-constant gradient; a 1-element one gets sqrt(1) exactly.
    scales = nnx_sai_state["scale"]
    assert float(scales["out"]["bias"]) == 1.0
    for layer, name, n in (("hidden", "kernel", 64), ("hidden", "bias", 16), ("out", "kernel", 16)):
        # G is a float32 statistic of n elements: its sums are correct to n float32 epsilons.
        assert float(scales[layer][name]) >= np.sqrt(n - 1) * (1 - n * np.finfo(np.float32).eps), (layer, name)


def test_nnx_state_round_trip_continues_exactly() -> None:
    x, y = _data()
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, sgd_sai(learning_rate=1e-2), wrt=nnx.Param)
    for _ in range(3):
        _train_step(model, optimizer, x, y)
    scales_after_3 = _as_numpy(nnx.to_pure_dict(nnx.state(optimizer))["opt_state"][0]["scale"])
    saved_model, saved_optimizer = _as_numpy(nnx.state(model)), _as_numpy(nnx.state(optimizer))  # host copies
    for _ in range(3):
        _train_step(model, optimizer, x, y)

    restored_model = MLP(nnx.Rngs(42))  # other initial weights: everything must come from the copies
    restored_optimizer = nnx.Optimizer(restored_model, sgd_sai(learning_rate=1e-2), wrt=nnx.Param)
    nnx.update(restored_model, jax.tree.map(jnp.asarray, saved_model))
    nnx.update(restored_optimizer, jax.tree.map(jnp.asarray, saved_optimizer))
    for _ in range(3):
        _train_step(restored_model, restored_optimizer, x, y)

    difference = _max_abs_difference(nnx.state(restored_model), nnx.state(model))
    # Exact: the same compiled step on the same values.
    assert difference == 0.0, f"continued run differs by {difference:.3e}"
    final = nnx.to_pure_dict(nnx.state(optimizer))
    assert _max_abs_difference(nnx.to_pure_dict(nnx.state(restored_optimizer)), final) == 0.0
    assert int(final["step"]) == 6
    # The scales were fixed at step 1 and carried, not recomputed.
    assert _max_abs_difference(final["opt_state"][0]["scale"], scales_after_3) == 0.0
    assert _max_abs_difference(nnx.state(model), saved_model) > 0.0  # steps 4-6 trained
