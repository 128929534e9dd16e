"""Subprocess helper of tests/test_jax_sharding.py: SGD-SaI on 8 host devices vs one device.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/jax_sharding_check.py``;
prints one JSON document with, per mesh kind (``auto``: GSPMD, ``explicit``: explicit sharding
inside ``jax.set_mesh``) and dtype, the largest normwise error of the sharded run against the
one-device run and the float64 NumPy reference after 10 jitted steps, whether shardings were
kept, and the scale of the sharded matrix against its whole-tensor and per-shard statistics.

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
    for step in range(NUM_STEPS):
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
    shardings = {
        k: NamedSharding(mesh, PartitionSpec("x", None) if k == SHARDED else PartitionSpec()) for k in SHAPES
    }
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
        "scales_sharded_vs_single": max(
            _normwise(sharded_state.scale[k], single_state.scale[k]) for k in SHAPES
        ),
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


def main() -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # this process only: float64 runs beside float32
    results = {f"{kind}-{dtype}": _run(kind, dtype) for kind in ("auto", "explicit") for dtype in ("float64", "float32")}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
