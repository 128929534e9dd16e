"""``sai_keras.gsnr_report`` / ``scale_report`` and ``sai-gsnr`` on ``.keras`` files, one subprocess per backend.

Keras fixes its backend per process and this pytest process never imports it: each backend runs
``tests/gsnr_keras_checks.py`` once (all three start together, on first use) and the tests below
assert its results one by one, so a failure names its backend and check. The gradient is the
only backend-specific step of the report (a tape, autograd, a stateless ``jax.grad``): each of
the three is exercised on a model whose gradients are constructed, so ``G`` is known exactly.
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

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "gsnr_keras_checks.py"
TIMEOUT_S = 600
BACKENDS = ("jax", "torch", "tensorflow")


def _check_names() -> list[str]:
    # The script imports only the standard library at module level.
    spec = importlib.util.spec_from_file_location("_gsnr_keras_checks_plan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.CHECKS)


def _installed(backend: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("keras", backend))


ROWS = [
    pytest.param(
        backend,
        check,
        id=f"{backend}-{check}",
        marks=[pytest.mark.slow]
        + ([] if _installed(backend) else [pytest.mark.skip(reason=f"keras or {backend} not installed")]),
    )
    for backend in BACKENDS
    for check in _check_names()
]


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory) -> Any:
    """Starts every installed backend's process at once; returns a function backend -> results."""
    out_dir = tmp_path_factory.mktemp("gsnr_keras")
    started = {}
    for backend in BACKENDS:
        if not _installed(backend):
            continue
        out, log = out_dir / f"{backend}.json", out_dir / f"{backend}.log"
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            # Three processes share the cores: OpenMP spin-waiting would slow torch tenfold.
            "OMP_NUM_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        with open(log, "w") as handle:
            process = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--out", str(out)],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=HERE.parent,
            )
        started[backend] = (process, out, log)
    results: dict[str, Any] = {}

    def get(backend: str) -> dict[str, Any]:
        if backend not in results:
            process, out, log = started[backend]
            try:
                process.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode != 0 or not out.exists():
                results[backend] = {"error": f"{backend}: exit {process.returncode}\n{log.read_text()[-4000:]}"}
            else:
                results[backend] = json.loads(out.read_text())
        return results[backend]

    yield get
    for process, _, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_keras_is_not_imported_in_this_process():
    assert "keras" not in sys.modules


@pytest.mark.parametrize("backend,check", ROWS)
def test_gsnr_keras(keras_results, backend, check):
    results = keras_results(backend)
    if "error" in results:
        pytest.fail(results["error"], pytrace=False)
    assert results["backend"] == backend
    outcome = results["checks"][check]
    assert outcome["ok"], f"{backend} {check}: {outcome['detail']}"
