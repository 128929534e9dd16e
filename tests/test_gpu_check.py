"""``benchmarks/gpu_check.sh --device cpu``: the GPU check's whole pipeline on the CPU, tiny sizes.

The conformance runners (torch per-tensor, foreach, fused; JAX jit) on a few golden cases, then the
torch and JAX step benchmarks, then the one table. Only that the pipeline runs and reports is
asserted here: the timings at these sizes mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all passed" in done.stdout
    result = json.loads(out.read_text())
    assert [row["runner"] for row in result["conformance"]] == ["torch", "torch-foreach", "torch-fused", "jax-jit"]
    assert all(row["counts"]["pass"] > 0 and row["counts"]["fail"] == 0 for row in result["conformance"])
    assert set(result["bench"]) == {"torch", "jax"}
    assert {"SGDSaI default", "AdamW(fused=True)"} <= set(result["bench"]["torch"]["large"]["medians_s"])
    assert {"sai", "adamw", "stream"} <= set(result["bench"]["jax"]["medians_s"])
