"""SGD-SaI on JAX's own sharding engine: 8 host devices, one matrix split by rows, the other leaves
replicated. After 10 jitted steps the sharded run equals the one-device run and the float64
reference, the shardings are kept (parameters and momentum), and the sharded matrix's g-SNR is
the whole tensor's statistic, not a shard's. optax's state-sharding recipe (state shardings derived
with ``optax.tree_map_params``, ``init`` under ``jit`` with them) works for every optimizer.

The device count is fixed when XLA starts, so the run happens in a subprocess
(``tests/jax_sharding_check.py``) with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

from sai_conformance import TOLERANCES  # noqa: E402

SCRIPT = Path(__file__).with_name("jax_sharding_check.py")
RUNS = [f"{kind}-{dtype}" for kind in ("auto", "explicit") for dtype in ("float64", "float32")]


@pytest.fixture(scope="module")
def results() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{SCRIPT.name} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_sharded_training_equals_one_device(results, run):
    r = results[run]
    dtype = run.split("-")[1]
    # Sharding changes only the order of the g-SNR's reductions (partial sums per device, then
    # an all-reduce): the dtype's trajectory tolerance applies.
    rtol = TOLERANCES[dtype].trajectory
    assert r["devices"] == 8
    assert r["sharded_vs_single"] <= rtol, r
    assert r["sharded_vs_reference"] <= rtol, r
    assert r["scales_sharded_vs_single"] <= rtol, r
    assert r["params_keep_sharding"] and r["buffer_keeps_sharding"], r
    assert r["matrix_shards"] == 8 and r["matrix_shard_shape"] == [8, 24], r


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_gsnr_of_a_sharded_matrix_is_the_whole_tensor_statistic(results, run):
    r = results[run]
    rtol = TOLERANCES[run.split("-")[1]].one_step
    assert r["max_gsnr"] == pytest.approx(r["reference_max_gsnr"], rel=rtol)
    assert r["matrix_scale"] == pytest.approx(r["whole_tensor_scale"], rel=rtol)
    assert not r["matrix_is_the_max"]  # M is another leaf's: the all-reduced maximum is checked too
    # Every shard alone has a clearly different statistic (row offsets differ per shard).
    assert all(abs(s - r["whole_tensor_scale"]) > 0.02 * r["whole_tensor_scale"] for s in r["per_shard_scales"]), r


RECIPES = ["sgd_sai", "sgd_sai momentum 0", "inject_hyperparams", "sgd_sai_groups", "sgd_sai_groups momentum 0 group"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_optax_state_sharding_recipe(results, name):
    # optax.tree_map_params derives the state's shardings from the parameters'; init under jit
    # with them as out_shardings, then jitted steps: every momentum buffer is sharded like its
    # parameter (the matrix's over all 8 devices, at init and after the steps), the per-leaf
    # scalars, count and M are replicated, and the result is the one-device run's.
    r = results[f"recipe-{name}"]
    rtol = TOLERANCES["float32"].trajectory
    assert r["same_state_structure"] and r["params_keep_sharding"] and r["scalars_replicated"], r
    assert r["buffers_sharded_like_params"], r
    assert r["buffers_checked"] == {"sgd_sai momentum 0": 0, "sgd_sai_groups momentum 0 group": 4}.get(name, 8), r
    assert r["matrix_buffer_shards"] == (None if name == "sgd_sai momentum 0" else 8), r
    assert r["sharded_vs_single"] <= rtol and r["state_vs_single"] <= rtol, r
