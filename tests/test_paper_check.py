"""``make paper-check`` (``python -m sai_paper``): the ``--quick`` run as CI's smoke test, and the rules it relies on.

The quick run (about a minute) is a subprocess (the check sets torch's thread count and starts worker processes);
it checks that the page and both charts are written, that the main table has a row for every
optimizer on every task, and that the page states its protocol. The rules (divergence, SPEC's
``paper`` conversion, the g-SNR summary) are checked directly on tiny runs.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from sai_core import report_from_gradients, resolve_config
from sai_paper._page import gsnr_summary
from sai_paper._protocol import OPTIMIZERS, PROFILES, load_task, train_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quick_run_writes_the_page_and_charts(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "sai_paper", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    page = (tmp_path / "paper-check.md").read_text()
    for chart in ("paper_lr.png", "paper_gsnr.png"):
        assert (tmp_path / chart).read_bytes()[:8] == PNG_MAGIC
        assert f"]({chart})" in page
    main_table = page.split("## Main table", 1)[1].split("## Protocol", 1)[0]
    rows = [line for line in main_table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    found = {(line.split(" | ")[0][2:], line.split(" | ")[1]) for line in rows}
    expected = {(task, spec.label) for task in ("gpt", "mlp", "cnn") for spec in OPTIMIZERS}
    assert found == expected
    for heading in ("## Conclusions", "## Every run", "## The g-SNR against tensor size", "## Memory", "## Runtime"):
        assert heading in page
    assert "Torch only" in page
    assert "lr * M" in page and "1e-2 / M" in page  # SPEC's conversion is stated
    assert "halved" in page  # the memory verdict is one of "halved" / "not halved"


def test_divergence_is_detected_and_a_small_lr_is_not_flagged():
    task = load_task(PROFILES["smoke"], "mlp")
    calm, _ = train_run(task, "sgd-sai", 1e-3, 0, default=True)
    assert not calm.diverged and calm.stopped_at is None
    wild, _ = train_run(task, "sgd", 1e3, 0, default=False)
    assert wild.diverged
    assert wild.stopped_at is not None or wild.final_loss > wild.initial_val_loss


def test_paper_runs_with_specs_conversion_equal_sgd_sai():
    task = load_task(PROFILES["smoke"], "cnn")
    sai, _ = train_run(task, "sgd-sai", 1e-2, 0, default=False)
    paper, _ = train_run(task, "paper", 1e-2, 0, default=False)
    assert paper.max_gsnr is not None and paper.max_gsnr > 1
    assert paper.lr_used == pytest.approx(1e-2 * paper.max_gsnr, rel=1e-5)
    assert paper.weight_decay_used == pytest.approx(1e-2 / paper.max_gsnr, rel=1e-5)
    assert paper.val_loss == pytest.approx(sai.val_loss, rel=1e-4)
    literal, _ = train_run(task, "paper", 1e-2, 0, default=False, on_grid=False)
    assert literal.lr_used == 1e-2  # unconverted: a much smaller effective step
    assert literal.val_loss[-1] != pytest.approx(sai.val_loss[-1], rel=1e-3)


def test_gsnr_summary_separates_size_from_mean():
    rng = np.random.default_rng(0)
    config = resolve_config()
    zero_mean = [rng.standard_normal(n) for n in (16, 256, 4096)]
    shifted = [g + 10.0 * (i == 0) for i, g in enumerate(zero_mean)]  # one tensor with a large mean
    clean = gsnr_summary(report_from_gradients(["a", "b", "c"], zero_mean, eps=1e-8, config=config, framework="numpy"))
    skewed = gsnr_summary(report_from_gradients(["a", "b", "c"], shifted, eps=1e-8, config=config, framework="numpy"))
    assert clean["r2_line"] > 0.99 and clean["ratio_max"] < 1.2
    assert skewed["r2_line"] < clean["r2_line"] and skewed["ratio_max"] > 5
    assert math.isclose(clean["slope"], 1.0, rel_tol=0.05)
