"""``make demo`` (``python -m sai_demo``): a smoke run with few steps, and the numbers it measures.

The smoke run is a subprocess (the demo starts its own Keras process, on the JAX backend); it checks
what the demo promises: both tables naming SGDSaI and AdamW, the files, the closing pointer to
``sai-conformance run``. The optimizer-state bytes it prints are measured, not computed: the
measurement is checked here against what each optimizer is known to store.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from sai_demo._gpt import CharData, GPTConfig, optimizer_state_bytes, train
from sai_torch import SGDSaI

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def test_state_bytes_are_measured_on_what_each_optimizer_holds():
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7))
    tensors = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in tensors)
    sai, adamw = SGDSaI(model.parameters()), torch.optim.AdamW(model.parameters())
    assert optimizer_state_bytes(sai) == optimizer_state_bytes(adamw) == 0  # nothing before a step
    model(torch.randn(3, 5)).square().sum().backward()
    sai.step()
    adamw.step()
    # SGDSaI: one float32 momentum buffer per tensor plus S and M (Python floats, 8 bytes each).
    assert optimizer_state_bytes(sai) == param_bytes + 16 * len(tensors)
    # AdamW: two float32 moments per tensor plus a 0-d float32 step count.
    assert optimizer_state_bytes(adamw) == 2 * param_bytes + 4 * len(tensors)


def test_two_optimizers_see_the_same_start_and_batches():
    data = CharData.from_text(TEXT)
    config = GPTConfig(vocab_size=len(data.vocabulary), block_size=8, n_layer=1, n_head=2, d_model=8)
    make = {
        "a": lambda m: torch.optim.SGD(m.parameters(), lr=0.0),
        "b": lambda m: torch.optim.SGD(m.parameters(), lr=0.0),
    }
    results, _ = train(make, data, config, steps=3, batch_size=4, seed=7, eval_every=1)
    # lr 0: the models never change, so equal losses mean equal weights and equal batches.
    assert results["a"].train_loss == results["b"].train_loss
    assert len(set(results["a"].train_loss)) == 3  # three different batches


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras not installed")
def test_demo_smoke_run(tmp_path):
    out = tmp_path / "demo-output"
    done = subprocess.run(
        [sys.executable, "-m", "sai_demo", "--steps", "4", "--keras-epochs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("| optimizer | val loss")]
    assert len(headers) == 2  # one table per model
    for header in headers:
        rows = [line.split(" | ")[0].lstrip("| ") for line in lines[header + 2 : header + 4]]
        assert rows == ["SGDSaI", "AdamW"]
    assert "sai-conformance run" in lines[-1]
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    for header in headers:  # the same tables in the Markdown file
        assert "\n".join(lines[header : header + 4]) in markdown
    assert (out / "gsnr.txt").read_text().startswith("g-SNR per tensor (torch, frozen in the optimizer state)")


def test_bad_flag_is_one_line_and_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", "sai_demo", "--steps", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr == "sai-demo: error: Invalid --steps: 0 (must be >= 1)\n"
