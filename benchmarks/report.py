"""``make bench``: every benchmark of ``benchmarks/``, several runs, one page (``docs/benchmarks.md``).

Runs ``torch_step.py``, ``jax_step.py`` and ``keras_apply.py`` (each with ``--json``) ``--runs``
times, alternating the scripts so that a burst of load from other processes hits one run of each
rather than every run of one. Inside each script the candidates (SaI and the framework's own
optimizers, and an in-place pass over a buffer of the same size) are interleaved step by step, so
every ratio is measured side by side; the page reports the median over runs of each run's ratio,
with every run's value beside it. The same renderer writes the GPU check's table
(``benchmarks/gpu_check.sh``) with ``--table-only``.

Usage::

    python benchmarks/report.py                     # the page and its charts (~10 minutes, 2 cores)
    python benchmarks/report.py --quick --runs 1 --out /tmp/b.md   # tiny sizes (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1 << 20

# (row, what SaI is compared with, the goal of issue 12 as a ratio, or None where the row is kept)
GOALS: list[tuple[str, str, float | None]] = [
    ("torch default path", "`torch.optim.AdamW(fused=True)`", 0.80),
    ("torch `fused=True`", "`torch.optim.AdamW(fused=True)`", 0.75),
    ("JAX jit", "`optax.adamw`", 0.75),
    ("Keras, TensorFlow graph", "Keras `SGD(momentum=0.9)`", 1.00),
    ("Keras, TensorFlow XLA", "Keras `SGD(momentum=0.9)`", 1.00),
    ("Keras, JAX", "Keras `SGD(momentum=0.9)`", None),
    ("Keras, torch backend", "Keras `SGD(momentum=0.9)`", 1.00),
]
# Before issue 12 (one run each, same machine), for the charts and the table.
BEFORE = {
    "torch default path": 0.87,
    "torch `fused=True`": 0.77,
    "JAX jit": 0.66,
    "Keras, TensorFlow graph": 1.18,
    "Keras, TensorFlow XLA": 1.02,
    "Keras, JAX": 0.77,
    "Keras, torch backend": 9.8,
}
KERAS_ROWS = {
    ("tensorflow", "graph"): "Keras, TensorFlow graph",
    ("tensorflow", "xla"): "Keras, TensorFlow XLA",
    ("jax", "jit"): "Keras, JAX",
    ("torch", "eager"): "Keras, torch backend",
}


def _commands(args: argparse.Namespace, tmp: Path, run: int) -> dict[str, list[str]]:
    py = sys.executable
    torch_sizes = ["--quick", "--steps", "7"] if args.quick else ["--steps", "7"]
    if run != args.runs - 1:
        torch_sizes.append("--no-memory")  # state and allocations do not vary: measured in the last run
    jax_sizes = (
        ["--layers", "2", "--d-model", "256", "--vocab", "8192", "--rounds", "5"] if args.quick else ["--rounds", "7"]
    )
    keras_sizes = ["--params", "1e6", "--width", "512", "--repeats", "5"] if args.quick else ["--repeats", "11"]
    return {
        "torch": [
            py,
            str(HERE / "torch_step.py"),
            "--only",
            "large",
            "--no-port",
            *torch_sizes,
            "--json",
            str(tmp / f"torch_{run}.json"),
        ],
        "jax": [py, str(HERE / "jax_step.py"), *jax_sizes, "--json", str(tmp / f"jax_{run}.json")],
        "keras": [
            py,
            str(HERE / "keras_apply.py"),
            *keras_sizes,
            "--backends",
            args.keras_backends,
            "--json",
            str(tmp / f"keras_{run}.json"),
        ],
    }


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("torch", "jax", "jaxlib", "optax", "keras", "tensorflow", "numpy", "matplotlib"):
        versions[name] = "not installed"
        for distribution in (name, f"{name}-cpu"):  # tensorflow-cpu provides tensorflow
            try:
                versions[name] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "versions": versions,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the scripts ``args.runs`` times each (alternating) and returns their JSON results."""
    results: dict[str, list[Any]] = {"torch": [], "jax": [], "keras": []}
    loads = [os.getloadavg()[0]]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for run in range(args.runs):
            for name, command in _commands(args, tmp, run).items():
                if name not in args.only:
                    continue
                print(f"[run {run + 1}/{args.runs}] {name}: {' '.join(command[1:])}", flush=True)
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                out = tmp / command[-1].rsplit("/", 1)[-1]
                if done.returncode != 0 or not out.exists():
                    raise SystemExit(
                        f"{name} benchmark failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
                    )
                results[name].append(json.loads(out.read_text()))
                loads.append(os.getloadavg()[0])
    return {
        "results": results,
        "machine": _machine(),
        "loads": loads,
        "seconds": time.perf_counter() - started,
        "runs": args.runs,
        "quick": args.quick,
    }


def ratio_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per line of the issue's table: every run's ratio, their median, the goal."""
    per_run: dict[str, list[float]] = {row: [] for row, _, _ in GOALS}
    fractions: dict[str, list[float]] = {row: [] for row, _, _ in GOALS}
    theirs: dict[str, list[float]] = {row: [] for row, _, _ in GOALS}  # the framework optimizer's fraction
    for r in data["results"]["torch"]:
        m = r["large"]["medians_s"]
        scale = m["in-place scale (bandwidth)"]
        per_run["torch default path"].append(m["SGDSaI default"] / m["AdamW(fused=True)"])
        fractions["torch default path"].append(2.5 * scale / m["SGDSaI default"])
        # AdamW reads p, g, m, v and writes p, m, v: 3.5 times the in-place pass's traffic.
        for name in ("torch default path", "torch `fused=True`"):
            theirs[name].append(3.5 * scale / m["AdamW(fused=True)"])
        if "SGDSaI fused=True" in m:
            per_run["torch `fused=True`"].append(m["SGDSaI fused=True"] / m["AdamW(fused=True)"])
            fractions["torch `fused=True`"].append(2.5 * scale / m["SGDSaI fused=True"])
    for r in data["results"]["jax"]:
        t = r["medians_s"]
        per_run["JAX jit"].append(t["sai"] / t["adamw"])
        # stream reads p, g and writes p (3 arrays); sai moves 5.
        fractions["JAX jit"].append((5 / 3) * t["stream"] / t["sai"])
        theirs["JAX jit"].append((7 / 3) * t["stream"] / t["adamw"])
    for r in data["results"]["keras"]:
        for backend in r["results"]:
            for mode, row in backend["modes"].items():
                name = KERAS_ROWS.get((backend["backend"], mode))
                if name:
                    per_run[name].append(row["ratio"])
                    fractions[name].append(row["sgd_sai_bandwidth_fraction"])
                    theirs[name].append(row["sgd_bandwidth_fraction"])
    rows = []
    for name, versus, goal in GOALS:
        values = per_run[name]
        median = statistics.median(values) if values else None
        rows.append(
            {
                "row": name,
                "versus": versus,
                "goal": goal,
                "runs": values,
                "median": median,
                "before": BEFORE[name],
                "bandwidth": statistics.median(fractions[name]) if fractions[name] else None,
                "their_bandwidth": statistics.median(theirs[name]) if theirs[name] else None,
                "met": None if median is None or goal is None else median <= goal,
            }
        )
    return rows


def memory_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """State bytes and first-step peak against AdamW, per backend (the last run's: they do not vary)."""
    rows = []
    if data["results"]["torch"]:
        r = data["results"]["torch"][-1]["large"]
        if "sai_state_bytes" in r:
            rows.append(
                {
                    "backend": "torch (`sai_torch.SGDSaI`)",
                    "param_bytes": r["param_bytes"],
                    "sai_state": r["sai_state_bytes"],
                    "adamw_state": r["adamw_state_bytes"],
                    "sai_peak": r["sai_first_peak_bytes"],
                    "adamw_peak": r["adamw_first_peak_bytes"],
                    "peak_how": "allocated inside the first `step()`, state included (torch profiler)",
                }
            )
    if data["results"]["jax"]:
        r = data["results"]["jax"][-1]
        rows.append(
            {
                "backend": "JAX (`sai_jax.sgd_sai`)",
                "param_bytes": r["param_bytes"],
                "sai_state": r["sai_state_bytes"],
                "adamw_state": r["adamw_state_bytes"],
                "sai_peak": r["sai_state_bytes"] + r["temp_bytes"]["sai"],
                "adamw_peak": r["adamw_state_bytes"] + r["temp_bytes"]["adamw"],
                "peak_how": "state + XLA temporaries of the compiled step (both branches of the first-step `lax.cond`)",
            }
        )
    if data["results"]["keras"]:
        for backend in data["results"]["keras"][-1]["results"]:
            rows.append(
                {
                    "backend": f"Keras, {backend['backend']}",
                    "param_bytes": backend["param_bytes"],
                    "sai_state": backend["sgd_sai_state_bytes"],
                    "adamw_state": backend["adamw_state_bytes"],
                    "sai_peak": None,
                    "adamw_peak": None,
                    "peak_how": "not measured (optimizer variables only)",
                }
            )
    return rows


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | SaI vs the framework's own | before | runs | **median** | goal | met | bandwidth vs in-place: SaI | theirs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        goal = "kept" if r["goal"] is None else f"<= {r['goal']:.2f}x"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        runs = ", ".join(f"{v:.3f}" for v in r["runs"]) or "not run"
        bandwidth = "-" if r["bandwidth"] is None else f"{100 * r['bandwidth']:.0f}%"
        their_bandwidth = "-" if r["their_bandwidth"] is None else f"{100 * r['their_bandwidth']:.0f}%"
        lines.append(
            f"| {r['row']} | {r['versus']} | {_fmt_ratio(r['before'])} | {runs} | **{_fmt_ratio(r['median'])}** "
            f"| {goal} | {met} | {bandwidth} | {their_bandwidth} |"
        )
    return "\n".join(lines)


def memory_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | parameters | SaI state | AdamW state | SaI / AdamW | SaI first-step peak | AdamW first-step peak | SaI / AdamW | peak measured as |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = (
            ("-", "-", "-")
            if r["sai_peak"] is None
            else (
                f"{r['sai_peak'] / MiB:.1f} MiB",
                f"{r['adamw_peak'] / MiB:.1f} MiB",
                f"{100 * r['sai_peak'] / r['adamw_peak']:.1f}%",
            )
        )
        lines.append(
            f"| {r['backend']} | {r['param_bytes'] / MiB:.1f} MiB | {r['sai_state'] / MiB:.1f} MiB "
            f"| {r['adamw_state'] / MiB:.1f} MiB | {100 * r['sai_state'] / r['adamw_state']:.1f}% "
            f"| {peak[0]} | {peak[1]} | {peak[2]} | {r['peak_how']} |"
        )
    return "\n".join(lines)


def absolute_table(data: dict[str, Any]) -> str:
    """Median step times (ms) of every candidate of the last run."""
    lines = ["| benchmark | candidate | median ms |", "|---|---|---|"]
    if data["results"]["torch"]:
        r = data["results"]["torch"][-1]["large"]
        for name, seconds in r["medians_s"].items():
            lines.append(f"| torch, {r['tensors']} tensors, {r['numel'] / 1e6:.1f}M | {name} | {1e3 * seconds:.2f} |")
    if data["results"]["jax"]:
        r = data["results"]["jax"][-1]
        for name, seconds in r["medians_s"].items():
            lines.append(f"| JAX, {r['leaves']} leaves, {r['numel'] / 1e6:.1f}M | {name} | {1e3 * seconds:.2f} |")
    if data["results"]["keras"]:
        for backend in data["results"]["keras"][-1]["results"]:
            for mode, row in backend["modes"].items():
                for key, label in (
                    ("sgd_ms", "Keras SGD(momentum)"),
                    ("sgd_sai_ms", "SGDSaI"),
                    ("inplace_ms", "in-place pass"),
                ):
                    lines.append(
                        f"| Keras {backend['backend']} {mode}, {backend['params'] / 1e6:.1f}M | {label} | {row[key]:.2f} |"
                    )
    return "\n".join(lines)


def charts(rows: list[dict[str, Any]], memory: list[dict[str, Any]], out_dir: Path, stem: str) -> list[str]:
    """Bar charts of the ratios (before / now / goal) and of the memory; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    measured = [r for r in rows if r["median"] is not None]
    if measured:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        labels = [r["row"].replace("`", "") for r in measured]
        y = range(len(measured))
        ax.barh(
            [i + 0.2 for i in y],
            [min(r["before"], 2.0) for r in measured],
            height=0.4,
            color="#bbbbbb",
            label="before (one run)",
        )
        ax.barh(
            [i - 0.2 for i in y], [r["median"] for r in measured], height=0.4, color="#3b75af", label="now (median)"
        )
        for i, r in zip(y, measured):
            if r["goal"] is not None:
                ax.plot([r["goal"], r["goal"]], [i - 0.45, i + 0.45], color="#c03030", linewidth=2)
            if r["before"] > 2.0:
                ax.text(2.0, i + 0.2, f" {r['before']:.1f}x", va="center", fontsize=8)
        ax.plot([], [], color="#c03030", linewidth=2, label="goal")
        ax.set_yticks(list(y), labels)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.5)
        ax.set_xlim(0, 2.2)
        ax.set_xlabel("SaI step time / the framework's own optimizer (lower is faster)")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        names.append(f"{stem}_ratios.png")
        fig.savefig(out_dir / names[-1], dpi=110)
        plt.close(fig)
    if memory:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        labels = [m["backend"].replace("`", "") for m in memory]
        y = range(len(memory))
        ax.barh(
            [i - 0.2 for i in y],
            [m["sai_state"] / m["adamw_state"] for m in memory],
            height=0.4,
            color="#3b75af",
            label="state",
        )
        ax.barh(
            [i + 0.2 for i in y],
            [0 if m["sai_peak"] is None else m["sai_peak"] / m["adamw_peak"] for m in memory],
            height=0.4,
            color="#7fb07f",
            label="first-step peak",
        )
        ax.set_yticks(list(y), labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.1)
        ax.set_xlabel("SaI / AdamW memory")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        names.append(f"{stem}_memory.png")
        fig.savefig(out_dir / names[-1], dpi=110)
        plt.close(fig)
    return names


def render(data: dict[str, Any], out: Path) -> str:
    rows = ratio_rows(data)
    memory = memory_rows(data)
    chart_names = charts(rows, memory, out.parent, out.stem)
    machine = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    loads = ", ".join(f"{v:.1f}" for v in data["loads"])
    met = [r["row"] for r in rows if r["met"]]
    missed = [r["row"] for r in rows if r["met"] is False]
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/report.py`); do not edit by hand. "
        + ("**Quick sizes (a smoke test): not the issue's sizes.** " if data["quick"] else ""),
        "",
        "**Every number on this page is CPU-only**, measured on the machine below. Absolute times on a GPU "
        "come from the GPU check (`benchmarks/gpu_check.sh`, see the end of this page), not from here.",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}, Python {machine['python']}",
        f"- Versions: {versions}",
        f"- {data['runs']} runs of each benchmark, alternating; {data['seconds'] / 60:.1f} minutes in all. "
        f"1-minute load average before and after each script: {loads} (load above the core count means other "
        "processes competed for the cores: absolute times then move by 10-30%; the ratios are measured side "
        "by side within each run, candidates interleaved step by step).",
        "",
        "## SaI against each framework's own optimizer",
        "",
        "Step time ratio (SaI / the framework's optimizer; lower is faster), each run's ratio of medians and the "
        "median over runs. *Bandwidth vs in-place*: SaI's effective memory bandwidth (it reads `p, g, m` and writes "
        "`p, m`) as a fraction of an in-place pass over a buffer of the same size, interleaved in the same run "
        "(torch: `buffer.mul_`, one read + one write; JAX: `p - c g`, two reads + one write; Keras: every "
        "variable scaled in place, compiled as the optimizers are), and the same for the framework's optimizer "
        "(AdamW moves 7 arrays, SGD 5). A value above 100% means the yardstick was slower than a pure "
        "stream: under TensorFlow XLA the compiled `assign(v * c)` is not done in place.",
        "",
        "The torch rows run 2 OpenMP threads on 2 cores: when other processes hold the cores, each parallel "
        "region's fork/join waits for a descheduled thread, and a path made of many short regions (the "
        "default path's cache-sized tiles: four passes per 4 MiB tile) slows down far more than a path of "
        "few long ones (AdamW's fused kernel). That is where the spread between runs comes from: "
        "compare the load averages above.",
        "",
        "Sizes: torch and JAX a GPT-2-small-shaped parameter set (124M float32 parameters, 148 tensors); Keras an "
        "MLP-shaped set of ~21M float32 parameters (2048x2048 matrices and biases), one `apply` per step, compiled "
        "as each backend's `model.fit` compiles its train step.",
        "",
        ratio_table(rows),
        "",
        f"Goals met: {'; '.join(met) or 'none'}. Not met: {'; '.join(missed) or 'none'}.",
        "",
    ]
    if chart_names:
        parts += [f"![SaI / framework optimizer step time]({chart_names[0]})", ""]
    parts += [
        "## Memory: optimizer state and first step, against AdamW",
        "",
        memory_table(memory),
        "",
    ]
    if len(chart_names) > 1:
        parts += [f"![SaI / AdamW memory]({chart_names[1]})", ""]
    parts += [
        "## Absolute step times (last run, CPU)",
        "",
        absolute_table(data),
        "",
        "## GPU",
        "",
        "`benchmarks/gpu_check.sh` runs, on a machine with one CUDA GPU and no network, the torch conformance "
        "runners (per-tensor, foreach, fused) and the JAX runner on the GPU, and the torch and JAX step benchmarks "
        "at GPT-2-small size (fused AdamW / `optax.adamw` side by side, HBM bandwidth fraction), and prints one "
        "table. Its numbers are the GPU's absolute times; none are quoted on this page.",
        "",
    ]
    text = "\n".join(parts)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each benchmark (medians over runs; default 3)")
    parser.add_argument(
        "--out", default=str(ROOT / "docs" / "benchmarks.md"), help="the page to write (charts beside it)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole pipeline")
    parser.add_argument("--only", default="torch,jax,keras", help="comma-separated subset of torch,jax,keras")
    parser.add_argument("--keras-backends", default="tensorflow,jax,torch")
    parser.add_argument("--from-json", metavar="FILE", help="render a saved measurement instead of measuring")
    parser.add_argument(
        "--save-json", metavar="FILE", help="where to save the raw measurement (default: the page's name, .json)"
    )
    args = parser.parse_args(argv)
    args.only = set(args.only.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(Path(args.from_json).read_text()) if args.from_json else measure(args)
    # The raw measurement beside the page, so that it can be re-rendered (--from-json) or audited.
    Path(args.save_json or out.with_suffix(".json")).write_text(json.dumps(data, indent=1))
    render(data, out)
    print(ratio_table(ratio_rows(data)))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
