"""Subprocess helper of tests/test_jax_sharding.py: SGD-SaI on 8 host devices vs one device.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/jax_sharding_check.py``;
prints one JSON document with, per mesh kind (``auto``: GSPMD, ``explicit``: explicit sharding
inside ``jax.set_mesh``) and dtype, the largest normwise error of the sharded run against the
one-device run and the float64 NumPy reference after 10 jitted steps, whether shardings were
kept, and the scale of the sharded matrix against its whole-tensor and per-shard statistics; and,
per optimizer (``recipe-*``), optax's state-sharding recipe: state shardings derived from the
parameters' with ``optax.tree_map_params``, ``init`` under ``jit`` with them as ``out_shardings``,
steps, and the result against the same optimizer on one device.

Importing this module does nothing (pytest's doctest collection imports every file in tests/).
"""

from __future__ import annotations

import json
import sys

NUM_DEVICES = 8
NUM_STEPS = 10
SHAPES = {"bias": (24,), "embedding": (64, 24), "norm": (), "proj": (24, 12)}
SHARDED = "embedding"  # rows split over the 8 devices; every other leaf replicated
# The default preset ("sgd-sai": S = G, about sqrt(n)) and its units: lr 5e-3 moves the 64x24
# matrix by about 5e-3 * 39 per unit of momentum.
LEARNING_RATE, WEIGHT_DECAY = 5e-3, 0.01


def _inputs():
    import numpy as np

    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = []
    for _ in range(NUM_STEPS):
        g = {k: rng.standard_normal(s) + 0.3 for k, s in SHAPES.items()}
        # Row-dependent offsets: each device's shard of the sharded matrix has statistics very
        # different from the whole tensor's, so a per-shard g-SNR would be caught.
        g[SHARDED] = g[SHARDED] + np.linspace(-3.0, 3.0, SHAPES[SHARDED][0])[:, None]
        # A larger mean makes another leaf's g-SNR the maximum M, so M is not the sharded
        # matrix's own statistic.
        g["proj"] = g["proj"] + 2.0
        grads.append(g)
    return params, grads


def _normwise(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def _train(params, grads, put, mesh_context):
    import jax
    import optax

    import sai_jax

    opt = sai_jax.sgd_sai(LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    @jax.jit
    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    with mesh_context():
        params = put(params)
        state = opt.init(params)
        for g in grads:
            params, state = step(params, state, put(g))
        jax.block_until_ready(params)
    return params, state[0]


def _run(kind: str, dtype_name: str) -> dict:
    import contextlib

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from sai_core import ReferenceSGDSaI, gsnr

    dtype = jnp.dtype(dtype_name)
    axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((NUM_DEVICES,), ("x",), axis_types=(axis_type,))
    shardings = {k: NamedSharding(mesh, PartitionSpec("x", None) if k == SHARDED else PartitionSpec()) for k in SHAPES}
    params0, grads = _inputs()
    params0 = {k: np.asarray(np.asarray(v, dtype), np.float64) for k, v in params0.items()}
    grads = [{k: np.asarray(np.asarray(v, dtype), np.float64) for k, v in g.items()} for g in grads]

    def sharded_put(tree):
        return {k: jax.device_put(jnp.asarray(v, dtype), shardings[k]) for k, v in tree.items()}

    def single_put(tree):
        return {k: jax.device_put(jnp.asarray(v, dtype), jax.devices()[0]) for k, v in tree.items()}

    mesh_context = (lambda: jax.set_mesh(mesh)) if kind == "explicit" else contextlib.nullcontext
    sharded, sharded_state = _train(params0, grads, sharded_put, mesh_context)
    single, single_state = _train(params0, grads, single_put, contextlib.nullcontext)

    reference = ReferenceSGDSaI([params0[k] for k in sorted(SHAPES)], lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    for g in grads:
        reference.step([g[k] for k in sorted(SHAPES)])

    first = grads[0]
    raw = {k: float(gsnr(first[k])) for k in SHAPES}
    shard_rows = SHAPES[SHARDED][0] // NUM_DEVICES
    per_shard = [float(gsnr(first[SHARDED][i * shard_rows : (i + 1) * shard_rows])) for i in range(NUM_DEVICES)]
    top = max(raw.values())
    buffer_sharding = sharded_state.momentum_buffer[SHARDED].sharding
    return {
        "devices": len(jax.devices()),
        "sharded_vs_single": max(_normwise(sharded[k], single[k]) for k in SHAPES),
        "sharded_vs_reference": max(_normwise(sharded[k], reference.params[i]) for i, k in enumerate(sorted(SHAPES))),
        "single_vs_reference": max(_normwise(single[k], reference.params[i]) for i, k in enumerate(sorted(SHAPES))),
        "scales_sharded_vs_single": max(_normwise(sharded_state.scale[k], single_state.scale[k]) for k in SHAPES),
        "params_keep_sharding": all(sharded[k].sharding.is_equivalent_to(shardings[k], len(SHAPES[k])) for k in SHAPES),
        "matrix_shards": len(sharded[SHARDED].addressable_shards),
        "matrix_shard_shape": list(sharded[SHARDED].addressable_shards[0].data.shape),
        "buffer_keeps_sharding": buffer_sharding.is_equivalent_to(shardings[SHARDED], 2),
        "max_gsnr": float(sharded_state.max_gsnr),
        "reference_max_gsnr": top,
        "matrix_is_the_max": raw[SHARDED] == top,
        "matrix_scale": float(sharded_state.scale[SHARDED]),  # S = G under the default preset
        "whole_tensor_scale": raw[SHARDED],
        "per_shard_scales": per_shard,
    }


# optax's state-sharding recipe (optax.tree_map_params) on each optimizer, by name.
RECIPE_OPTIMIZERS = (
    "sgd_sai",
    "sgd_sai momentum 0",
    "inject_hyperparams",
    "sgd_sai_groups",
    "sgd_sai_groups momentum 0 group",
)


def _recipe_optimizer(name: str):
    import optax

    import sai_jax

    groups = {
        "matrix": {"learning_rate": LEARNING_RATE},
        "rest": {"learning_rate": 2 * LEARNING_RATE, "weight_decay": 0.0},
    }
    labels = {k: "matrix" if len(s) == 2 else "rest" for k, s in SHAPES.items()}
    if name == "sgd_sai":
        return sai_jax.sgd_sai(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    if name == "sgd_sai momentum 0":
        return sai_jax.sgd_sai(LEARNING_RATE, momentum=0.0, weight_decay=WEIGHT_DECAY)
    if name == "inject_hyperparams":
        return optax.inject_hyperparams(sai_jax.sgd_sai)(learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    if name == "sgd_sai_groups":
        return sai_jax.sgd_sai_groups(groups, labels)
    groups["rest"]["momentum"] = 0.0  # those leaves keep no buffer: None in the buffer tree
    return sai_jax.sgd_sai_groups(groups, labels)


def _recipe_run(name: str) -> dict:
    """optax's recipe: state shardings derived from the parameters' with ``tree_map_params``.

    The state is initialized under ``jit`` with those ``out_shardings`` (so no leaf is ever
    materialized unsharded), steps run under ``jit`` with the same shardings, and the result is
    compared with the same optimizer on one device.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((NUM_DEVICES,), ("x",))
    replicated = NamedSharding(mesh, PartitionSpec())
    param_shardings = {k: NamedSharding(mesh, PartitionSpec("x", None)) if k == SHARDED else replicated for k in SHAPES}
    params0, grads = _inputs()
    params0 = {k: jnp.asarray(v, jnp.float32) for k, v in params0.items()}
    grads = [{k: jnp.asarray(v, jnp.float32) for k, v in g.items()} for g in grads]
    opt = _recipe_optimizer(name)
    # The recipe: f maps each parameter-shaped state tree onto the parameters' shardings; every
    # other field (count, M, the per-leaf scalar scales and flags, hyperparameters) is replicated.
    # is_leaf: a leaf whose momentum is 0 has None for a buffer, to which f then maps a sharding
    # that covers no array (as optax documents is_leaf for masked states).
    state_shardings = optax.tree_map_params(
        opt,
        lambda _, sharding: sharding,
        jax.eval_shape(opt.init, params0),
        param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: x is None,
    )

    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    params = jax.device_put(params0, param_shardings)
    state = jax.jit(opt.init, out_shardings=state_shardings)(params)
    initial_buffers = _sai_state(state).momentum_buffer
    sharded_step = jax.jit(step, out_shardings=(param_shardings, state_shardings))
    for g in grads:
        params, state = sharded_step(params, state, jax.device_put(g, param_shardings))
    single_params, single_state = params0, opt.init(params0)
    single_step = jax.jit(step)
    for g in grads:
        single_params, single_state = single_step(single_params, single_state, g)

    sai = _sai_state(state)
    buffers = sai.momentum_buffer
    buffer_checks = []
    for tree in (initial_buffers, buffers):
        if tree is not None:
            buffer_checks += [
                tree[k].sharding.is_equivalent_to(param_shardings[k], len(SHAPES[k]))
                for k in SHAPES
                if tree[k] is not None
            ]
    scalars = [sai.count, sai.max_gsnr, *jax.tree.leaves(sai.scale), *jax.tree.leaves(sai.initialized)]
    return {
        "buffers_checked": len(buffer_checks),
        "buffers_sharded_like_params": all(buffer_checks),
        "matrix_buffer_shards": None
        if buffers is None or buffers[SHARDED] is None
        else len(buffers[SHARDED].addressable_shards),
        "scalars_replicated": all(x.sharding.is_equivalent_to(replicated, 0) for x in scalars),
        "params_keep_sharding": all(
            params[k].sharding.is_equivalent_to(param_shardings[k], len(SHAPES[k])) for k in SHAPES
        ),
        "sharded_vs_single": max(_normwise(params[k], single_params[k]) for k in SHAPES),
        "state_vs_single": max(
            (_normwise(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(single_state))), default=0.0
        ),
        "same_state_structure": jax.tree.structure(state) == jax.tree.structure(single_state),
    }


def _sai_state(state):
    import sai_jax

    (sai,) = [n for n in _tree_nodes(state) if isinstance(n, sai_jax.ScaleBySaIState)]
    return sai


def _tree_nodes(tree):
    import jax

    import sai_jax

    return jax.tree.leaves(tree, is_leaf=lambda n: isinstance(n, sai_jax.ScaleBySaIState))


def main() -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # this process only: float64 runs beside float32
    results = {
        f"{kind}-{dtype}": _run(kind, dtype) for kind in ("auto", "explicit") for dtype in ("float64", "float32")
    }
    results.update({f"recipe-{name}": _recipe_run(name) for name in RECIPE_OPTIMIZERS})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
