"""benchmarks/jax_step.py runs end to end at a tiny size (its timings are for the record, not
asserted: CI machines are noisy); the deterministic state-size check must pass.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "jax_step.py"


@pytest.mark.slow
def test_benchmark_runs_at_a_tiny_size():
    args = ["--layers", "1", "--d-model", "32", "--vocab", "256", "--context", "32", "--rounds", "2", "--warmup", "0"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert "in 16 leaves" in out  # 2 + 12 * 1 + 2
    for row in ("sgd", "sai", "adamw", "stream", "sai first"):
        assert f"\n{row} " in out, out
    state_line = next(line for line in out.splitlines() if line.startswith("sai state bytes over params"))
    assert state_line.endswith("PASS"), state_line
