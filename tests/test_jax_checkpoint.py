"""The optimizer state checkpoints with plain ``jax.tree`` flattening + ``numpy.savez`` and resumes
exactly: training interrupted after 3 steps, saved, restored into a fresh ``init`` template and
continued equals uninterrupted training bit for bit (the scales, ``M`` and the initialized flags
are restored, never recomputed after the restart; a leaf still uninitialized at the checkpoint
initializes after it exactly as without the interruption).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy

from jax_helpers import restore, save  # noqa: E402

import sai_jax  # noqa: E402

OPTIMIZERS = [
    pytest.param(lambda: sai_jax.sgd_sai(optax.linear_schedule(0.01, 0.001, 6)), id="sgd_sai with a schedule"),
    pytest.param(lambda: sai_jax.sgd_sai(0.01, momentum=0.0), id="sgd_sai momentum 0"),
    pytest.param(lambda: sai_jax.sgd_sai(0.1, preset="paper"), id="sgd_sai paper"),
    pytest.param(lambda: optax.inject_hyperparams(sai_jax.sgd_sai)(), id="inject_hyperparams"),
    pytest.param(
        lambda: sai_jax.sgd_sai_groups(
            {"w": {"learning_rate": 0.01}, "b": {"learning_rate": 0.005, "momentum": 0.0}}, {"w": "w", "b": "b"}
        ),
        id="sgd_sai_groups",
    ),
]


@pytest.mark.parametrize("late", [False, True], ids=["all initialized at step 1", "b initializes after the restart"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("make", OPTIMIZERS)
def test_resume_from_a_numpy_checkpoint_is_exact(make, dtype, late, tmp_path):
    rng = np.random.default_rng(0)
    params0 = {"w": jnp.asarray(rng.standard_normal((6, 5)), dtype), "b": jnp.asarray(rng.standard_normal(5), dtype)}
    grads = [
        jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) + 0.3, p.dtype), params0) for _ in range(6)
    ]
    if late:  # b: a NaN gradient, then zeros (both uninformative), until step 5
        grads[0]["b"] = grads[0]["b"].at[2].set(jnp.nan)
        for step in (1, 2, 3):
            grads[step]["b"] = jnp.zeros_like(grads[step]["b"])
    opt = make()

    @jax.jit
    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    params, state = params0, opt.init(params0)
    for g in grads:
        params, state = step(params, state, g)
    uninterrupted = params

    params, state = params0, opt.init(params0)
    for g in grads[:3]:
        params, state = step(params, state, g)
    if late:
        (sai,) = [n for n in jax.tree.leaves(state, is_leaf=_is_sai) if _is_sai(n)]
        assert not bool(sai.initialized["b"]) and bool(sai.initialized["w"])
        np.testing.assert_array_equal(np.asarray(params["b"], np.float64), np.asarray(params0["b"], np.float64))
    save(tmp_path / "params.npz", params)
    save(tmp_path / "opt_state.npz", state)
    saved_state = state
    del params, state

    params = restore(tmp_path / "params.npz", params0)
    state = restore(tmp_path / "opt_state.npz", opt.init(params0))
    assert jax.tree.structure(state) == jax.tree.structure(saved_state)
    assert jax.tree.all(
        jax.tree.map(lambda a, b: a.dtype == b.dtype and bool(jnp.array_equal(a, b)), state, saved_state)
    )
    for g in grads[3:]:
        params, state = step(params, state, g)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(uninterrupted)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(want, np.float64))


def _is_sai(node: Any) -> bool:
    return isinstance(node, sai_jax.ScaleBySaIState)


def test_restored_scales_are_used_not_recomputed(tmp_path):
    # After a restore the initialized flags are set, so the stored scales are used even if the
    # next gradient has very different statistics: editing the saved scale changes the next
    # update accordingly.
    params = {"w": jnp.ones((4, 4))}
    opt = sai_jax.sgd_sai(0.1, weight_decay=0.0, momentum=0.0)
    _, state = opt.update({"w": jnp.arange(16.0).reshape(4, 4)}, opt.init(params), params)
    save(tmp_path / "s.npz", state)
    restored = restore(tmp_path / "s.npz", opt.init(params))
    halved = jax.tree.map(lambda x: x, restored)
    halved[0].scale["w"] = restored[0].scale["w"] / 2
    g = {"w": jnp.full((4, 4), 3.0)}
    full_update, _ = opt.update(g, restored, params)
    half_update, _ = opt.update(g, halved, params)
    np.testing.assert_allclose(half_update["w"], full_update["w"] / 2, rtol=1e-7)
