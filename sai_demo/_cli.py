"""``python -m sai_demo`` (``make demo``): train with SGD-SaI and AdamW side by side, and show the g-SNR.

1. A character-level GPT (torch, :mod:`sai_demo._gpt`) on ``pydoc_data.topics``, once with
   ``sai_torch.SGDSaI()`` and once with ``torch.optim.AdamW()``: same seed, same initial weights,
   same batches, both optimizers at their documented defaults (learning rate 1e-3 for both).
2. An MLP on scikit-learn's digits in Keras ``model.compile`` (:mod:`sai_demo._digits`, in a
   subprocess on one Keras backend), ``sai_keras.SGDSaI()`` against ``keras.optimizers.AdamW()``.

Prints one table per model (validation loss and accuracy, optimizer-state bytes measured on the
state the optimizer holds, median step time) and the g-SNR of the GPT's tensors, and writes to the
output folder ``demo.png`` (loss curves and the per-tensor scales), ``results.md`` (the same tables)
and ``gsnr.txt`` (the ``sai-gsnr`` table of the GPT).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

_PROGRESS = "@@sai-demo progress"


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a results table."""

    optimizer: str
    val_loss: float
    val_accuracy: float
    state_bytes: int
    param_bytes: int
    median_step_ms: float
    median_optimizer_ms: float | None = None  # torch only: optimizer.step() alone


def markdown_table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table (also what the console shows).

    Examples:
        >>> print(markdown_table([Row("SGDSaI", 1.5, 0.5, 400, 400, 2.0, 0.25)]))
        | optimizer | val loss | val accuracy | optimizer state | state / params | median step | median optimizer.step |
        |---|---|---|---|---|---|---|
        | SGDSaI | 1.5000 | 50.0% | 400 B | 1.00x | 2.0 ms | 0.25 ms |
    """
    with_optimizer_time = any(r.median_optimizer_ms is not None for r in rows)
    header = ["optimizer", "val loss", "val accuracy", "optimizer state", "state / params", "median step"]
    if with_optimizer_time:
        header.append("median optimizer.step")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r.optimizer,
            f"{r.val_loss:.4f}",
            f"{100 * r.val_accuracy:.1f}%",
            _bytes(r.state_bytes),
            f"{r.state_bytes / r.param_bytes:.2f}x",
            f"{r.median_step_ms:.1f} ms",
        ]
        if with_optimizer_time:
            cells.append("-" if r.median_optimizer_ms is None else f"{r.median_optimizer_ms:.2f} ms")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bytes(count: int) -> str:
    if count < 10_000:
        return f"{count} B"
    return f"{count:,} B ({count / 2**20:.2f} MiB)"


def verdict(model: str, rows: Sequence[Row]) -> str:
    """One plain sentence: which optimizer ended with the lower validation loss, by how much.

    Examples:
        >>> verdict("the GPT", [Row("SGDSaI", 1.5, 0.5, 4, 4, 1.0), Row("AdamW", 1.6, 0.5, 8, 4, 1.0)])
        'On the GPT, SGDSaI ended with the lower validation loss: 1.5000 against 1.6000 for AdamW (6.3% lower), with 0.50x the optimizer state.'
    """
    best, other = sorted(rows, key=lambda r: r.val_loss)[:2]
    if best.val_loss == other.val_loss:
        return f"On {model}, both optimizers ended at validation loss {best.val_loss:.4f}."
    gap = 100 * (other.val_loss - best.val_loss) / other.val_loss
    return (
        f"On {model}, {best.optimizer} ended with the lower validation loss: {best.val_loss:.4f} against "
        f"{other.val_loss:.4f} for {other.optimizer} ({gap:.1f}% lower), with "
        f"{best.state_bytes / other.state_bytes:.2f}x the optimizer state."
    )


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _train_gpt(args: argparse.Namespace, progress: Any) -> tuple[list[Row], dict[str, Any], Any]:
    import torch

    from sai_torch import SGDSaI, scale_report

    torch.set_num_threads(args.threads)

    from ._gpt import GPT, CharData, GPTConfig, load_text, train

    data = CharData.from_text(load_text())
    config = GPTConfig(vocab_size=len(data.vocabulary))
    optimizers = {
        # Both at their documented defaults: lr 1e-3 and weight decay 1e-2 for each.
        "SGDSaI": lambda model: SGDSaI(model.named_parameters()),
        "AdamW": lambda model: torch.optim.AdamW(model.parameters()),
    }
    task = progress.add_task("GPT (torch): SGDSaI and AdamW", total=args.steps)
    runs, trained = train(
        optimizers,
        data,
        config,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        eval_every=max(1, args.steps // 12),
        on_step=lambda: progress.advance(task),
    )
    rows = [
        Row(
            name,
            run.val_loss[-1],
            run.val_accuracy,
            run.state_bytes,
            run.param_bytes,
            statistics.median(run.step_ms),
            statistics.median(run.optimizer_ms),
        )
        for name, run in runs.items()
    ]
    parameters = sum(p.numel() for p in GPT(config).parameters())
    curves = {
        "parameters": parameters,
        "config": dataclasses.asdict(config),
        "runs": {
            name: {"steps": r.steps, "val_loss": r.val_loss, "train_loss": r.train_loss} for name, r in runs.items()
        },
    }
    return rows, curves, scale_report(trained["SGDSaI"])


def _train_digits(args: argparse.Namespace, progress: Any, out: Path) -> tuple[list[Row], dict[str, Any]]:
    result_file = out / "digits.json"
    env = {**os.environ, "KERAS_BACKEND": args.keras_backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        "-m",
        "sai_demo._digits",
        "--epochs",
        str(args.keras_epochs),
        "--seed",
        str(args.seed),
        "--out",
        str(result_file),
    ]
    tasks = {
        name: progress.add_task(f"digits (Keras, {args.keras_backend}), {name}", total=args.keras_epochs)
        for name in ("SGDSaI", "AdamW")
    }
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(_PROGRESS):
                name = line.split()[2]
                progress.advance(tasks[name])
        code = process.wait()
        errors.seek(0)
        tail = errors.read()[-3000:]
    if code != 0:
        raise RuntimeError(
            f"the Keras part ({' '.join(command)}, KERAS_BACKEND={args.keras_backend}) exited with status {code}:\n{tail}"
        )
    document = json.loads(result_file.read_text())
    result_file.unlink()
    rows = [
        Row(
            r["name"], r["val_loss"][-1], r["val_accuracy"][-1], r["state_bytes"], r["param_bytes"], r["median_step_ms"]
        )
        for r in document["runs"]
    ]
    return rows, document


def _figure(path: Path, gpt: dict[str, Any], digits: dict[str, Any], report: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sai_gsnr import plot_report

    colors = {"SGDSaI": "C0", "AdamW": "C1"}
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.9), dpi=80)
    ax = axes[0]
    for name, run in gpt["runs"].items():
        ax.plot(range(1, len(run["train_loss"]) + 1), run["train_loss"], color=colors[name], alpha=0.25, linewidth=0.8)
        ax.plot(
            run["steps"], run["val_loss"], color=colors[name], marker="o", markersize=3, label=f"{name} (validation)"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / character)")
    ax.set_title(f"char GPT, {gpt['parameters'] / 1e6:.2f}M parameters (torch; faint: training)", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    for run in digits["runs"]:
        ax.plot(
            run["epochs"],
            run["val_loss"],
            color=colors[run["name"]],
            marker="o",
            markersize=3,
            label=f"{run['name']} (validation)",
        )
        ax.plot(run["epochs"], run["train_loss"], color=colors[run["name"]], alpha=0.35, linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"digits MLP (Keras model.compile, {digits['backend']}; faint: training)", fontsize=9)
    ax.legend(fontsize=8)
    plot_report(report, ax=axes[2], title="SGDSaI's frozen scale S = G of each GPT tensor")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sai_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="GPT training steps per optimizer (default 300)")
    parser.add_argument("--keras-epochs", type=int, default=20, help="digits epochs per optimizer (default 20)")
    parser.add_argument(
        "--keras-backend",
        default="jax",
        choices=("jax", "torch", "tensorflow"),
        help="the Keras backend of the digits run (default jax)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="GPT batch size, in windows of 64 characters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine OpenMP threads spin-waiting on busy cores made "
        "a GPT step 3-4x slower with 2 threads than with 1; pass the core count on an idle machine)",
    )
    parser.add_argument("--out", default="demo-output", help="output folder (default demo-output/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "keras_epochs", "batch_size", "threads"):
        if getattr(args, name) < 1:
            print(
                f"sai-demo: error: Invalid --{name.replace('_', '-')}: {getattr(args, name)} (must be >= 1)",
                file=sys.stderr,
            )
            return 2
    began = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from sai_gsnr import format_report

    with _progress() as progress:
        gpt_rows, gpt, report = _train_gpt(args, progress)
        digits_rows, digits = _train_digits(args, progress, out)
    _figure(out / "demo.png", gpt, digits, report)
    gsnr_text = format_report(report)
    (out / "gsnr.txt").write_text(gsnr_text + "\n")

    matrices = [row.ratio for row in report.rows if row.ratio is not None and len(row.shape) >= 2]
    vectors = [row.ratio for row in report.rows if row.ratio is not None and len(row.shape) < 2]
    gpt_title = (
        f"Char GPT on pydoc_data.topics (torch, {gpt['parameters']:,} parameters, {args.steps} steps of "
        f"{args.batch_size}x{gpt['config']['block_size']} characters, lr 1e-3 both)"
    )
    digits_title = (
        f"Digits MLP in Keras model.compile ({digits['backend']} backend, {args.keras_epochs} epochs of batch "
        f"{digits['batch_size']}, defaults: SGDSaI lr 1e-3 wd 1e-2, AdamW lr 1e-3 wd 4e-3)"
    )
    sections = [
        (gpt_title, markdown_table(gpt_rows), verdict("the GPT", gpt_rows)),
        (digits_title, markdown_table(digits_rows), verdict("the digits MLP", digits_rows)),
    ]
    gsnr_line = (
        f"The g-SNR of the GPT's {len(report.rows)} tensors, frozen at step 1 (S = G under the default preset): "
        f"G / sqrt(n - 1) is {min(matrices):.5f} to {max(matrices):.5f} for the {len(matrices)} matrices and "
        f"{min(vectors):.4f} to {max(vectors):.4f} for the {len(vectors)} vectors (biases, LayerNorm), so each "
        f"tensor's step is about lr * sqrt(n) times its momentum; M = {report.max_gsnr:.1f} "
        f"(table: {out / 'gsnr.txt'}; `sai-gsnr MODULE:FUNCTION` shows it for any model)."
    )
    print()
    for title, table, line in sections:
        print(title)
        print(table)
        print(line)
        print()
    print(gsnr_line)
    markdown = ["# sai-optim demo", ""]
    for title, table, line in sections:
        markdown += [f"## {title}", "", table, "", line, ""]
    markdown += ["## g-SNR", "", gsnr_line, "", "```", gsnr_text, "```", "", "![loss curves and scales](demo.png)", ""]
    (out / "results.md").write_text("\n".join(markdown))
    print(
        f"Wrote {out / 'demo.png'}, {out / 'results.md'} and {out / 'gsnr.txt'} in {time.perf_counter() - began:.0f} s."
    )
    print(
        "Next: `sai-conformance run` replays the golden vectors on every installed backend "
        "(.venv/bin/sai-conformance run)."
    )
    return 0
