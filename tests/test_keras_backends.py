"""``sai_keras`` on the TensorFlow, JAX and torch backends of Keras 3, one subprocess per backend.

Keras fixes its backend per process, and this pytest process also hosts the torch and JAX tests,
so Keras is never imported here. Each backend configuration runs ``tests/keras_backend_checks.py``
once (all selected configurations start together, on first use), which writes every result as
JSON; the tests below assert those results one by one, so a failure names its backend and check:

* ``tensorflow``: model.fit in graph mode (``jit_compile`` False and True) and ``run_eagerly``,
  ``MirroredStrategy`` over 2 logical CPUs, and the golden vectors compiled and eager;
* ``jax``: jit and ``run_eagerly``, ``DataParallel`` over 8 host devices (``XLA_FLAGS``), golden
  vectors in float32/bfloat16 (JAX stores float64 only with x64 enabled);
* ``jax-x64``: the float64 golden vectors with ``JAX_ENABLE_X64=1``, and the contract v2 apply
  checks (deferred first gradients, zero-size variables) in float32 and float64;
* ``torch``: the default (eager) ``fit`` and ``run_eagerly``, and the golden vectors.

Every configuration also runs contract v2's apply-level checks in each of its apply modes (eager,
``tf.function`` with and without XLA, ``jax.jit``): NaN / inf / all-zero first gradients deferred,
the overflow-safe statistic, zero-size variables (see ``APPLY_CHECKS`` in the script).

Debug one backend by running the script directly (see its docstring).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sai_conformance import load_cases
from sai_conformance._harness import MODES

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "keras_backend_checks.py"
TIMEOUT_S = 900


def _load_script() -> Any:
    # The script imports only the standard library at module level (Keras stays out of here).
    spec = importlib.util.spec_from_file_location("_keras_backend_checks_plan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


CHECKS = _load_script()
CASES = load_cases()

# Backend library each configuration needs, and its extra environment.
CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "tensorflow": ("tensorflow", {}),
    "jax": ("jax", {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}),
    "jax-x64": ("jax", {"JAX_ENABLE_X64": "1"}),
    "torch": ("torch", {}),
}


def _installed(config: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("keras", CONFIGS[config][0]))


def _params(rows: list[tuple], ids: list[str]) -> list[Any]:
    return [
        pytest.param(
            *row,
            id=name,
            marks=[pytest.mark.slow]
            + ([] if _installed(row[0]) else [pytest.mark.skip(reason=f"{CONFIGS[row[0]][0]} or keras not installed")]),
        )
        for row, name in zip(rows, ids)
    ]


CHECK_ROWS = [(config, name) for config in CONFIGS for name in CHECKS.check_names(config)]
CONFORMANCE_ROWS = [
    (config, label, case.name, mode)
    for config in CONFIGS
    for label, _ in CHECKS.conformance_plan(config)
    for case in CASES
    if config != "jax-x64" or case.dtype == "float64"
    for mode in MODES
]


class _Processes:
    """Starts the selected configurations' subprocesses together and collects their JSON."""

    def __init__(self, configs: list[str], out_dir: Path) -> None:
        self.started: dict[str, tuple[subprocess.Popen, Path, Path]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        for config in configs:
            backend = CONFIGS[config][0]
            out, log = out_dir / f"{config}.json", out_dir / f"{config}.log"
            env = {
                **os.environ,
                "KERAS_BACKEND": "jax" if config == "jax-x64" else backend,
                # Four processes share the cores: OpenMP spin-waiting on oversubscribed cores
                # slows torch's kernels tenfold.
                "OMP_NUM_THREADS": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **CONFIGS[config][1],
            }
            handle = open(log, "w")
            process = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--config", config, "--out", str(out)],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=HERE.parent,
            )
            handle.close()
            self.started[config] = (process, out, log)

    def get(self, config: str) -> dict[str, Any]:
        if config not in self.results:
            process, out, log = self.started[config]
            try:
                process.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode != 0 or not out.exists():
                tail = log.read_text()[-6000:]
                self.results[config] = {"error": f"{config} subprocess exited {process.returncode}:\n{tail}"}
            else:
                self.results[config] = json.loads(out.read_text())
        return self.results[config]

    def close(self) -> None:
        for process, _, _ in self.started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def keras_results(request, tmp_path_factory):
    """Per configuration, the JSON the subprocess wrote (started once, for the selected tests)."""
    # Doctest items have no module or callspec; only this module's parametrized tests count.
    params = [
        item.callspec.params
        for item in request.session.items
        if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
    ]
    selected = {p["config"] for p in params if "config" in p}
    processes = _Processes(sorted(c for c in selected if _installed(c)), tmp_path_factory.mktemp("keras"))
    yield processes
    processes.close()


def _results(keras_results, config: str) -> dict[str, Any]:
    results = keras_results.get(config)
    if "error" in results:
        pytest.fail(results["error"], pytrace=False)
    return results


def test_keras_is_not_imported_in_this_process():
    # Keras fixes its backend at import; this process hosts other backends' tests too.
    assert "keras" not in sys.modules


@pytest.mark.parametrize("config,check", _params(CHECK_ROWS, [f"{c}-{n}" for c, n in CHECK_ROWS]))
def test_keras_check(keras_results, config, check):
    results = _results(keras_results, config)
    assert check in results["checks"], f"{config}: check {check} was not reported"
    outcome = results["checks"][check]
    assert outcome["ok"], f"{config} {check}: {outcome['detail']}"


@pytest.mark.parametrize(
    "config,label,case,mode",
    _params(CONFORMANCE_ROWS, [f"{c}-{label}-{case}-{mode}" for c, label, case, mode in CONFORMANCE_ROWS]),
)
def test_keras_conformance(keras_results, config, label, case, mode):
    rows = _results(keras_results, config)["conformance"].get(label, [])
    found = [r for r in rows if r["case"] == case and r["mode"] == mode]
    assert len(found) == 1, f"{config} {label}: {case} {mode} reported {len(found)} times"
    result = found[0]
    if result["status"] == "n/a":
        pytest.skip(f"not applicable on {result['runner']}: {result['detail']}")
    if result["status"] == "xfail":
        pytest.xfail(result["detail"])
    assert result["status"] == "pass", result["detail"]
