"""The GPU check: conformance on the device, and the step benchmarks at GPT-2-small size; one table.

Run by ``benchmarks/gpu_check.sh`` (which installs carried wheels first where needed). On a machine
with one CUDA GPU:

1. the golden-vector conformance of the torch runners (per-tensor, foreach, fused) with every
   tensor on the GPU, and of the JAX runner (``jax-jit``) on JAX's default device (the GPU when a
   CUDA jaxlib is installed);
2. ``benchmarks/torch_step.py`` at GPT-2-small size on the GPU (SaI default and ``fused=True``
   interleaved with ``torch.optim.AdamW(fused=True)`` and an in-place pass: HBM bandwidth fraction);
3. ``benchmarks/jax_step.py`` at GPT-2-small size (SaI interleaved with ``optax.adamw``, optax SGD
   and an in-place stream).

It prints one table (and writes it as JSON with ``--json``). ``--device cpu`` runs the same on the
CPU at tiny sizes: the test of this script (``tests/test_gpu_check.py``).

Usage::

    python benchmarks/gpu_check.py                 # the GPU, GPT-2 small
    python benchmarks/gpu_check.py --device cpu    # CPU, tiny sizes (~20 s)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Tiny sizes for --device cpu: the pipeline, not the numbers.
# The fused kernel's compilation (Inductor, ~10 s on 2 cores) is left to the torch-fused conformance runner there.
TINY_TORCH = [
    "--layers",
    "1",
    "--d-model",
    "64",
    "--vocab",
    "512",
    "--context",
    "64",
    "--steps",
    "7",
    "--warmup",
    "1",
    "--no-fused",
]
TINY_JAX = ["--layers", "1", "--d-model", "64", "--vocab", "512", "--context", "64", "--rounds", "3", "--warmup", "1"]
# A few cases per dtype at tiny sizes, every case on the GPU.
TINY_CASES = 2


def conformance_rows(device: str, tiny: bool) -> list[dict[str, Any]]:
    """Runs the torch runners on ``device`` and the JAX jit runner; one row per runner."""
    from sai_conformance import load_cases
    from sai_conformance._harness import MODES, check_case
    from sai_conformance.runners.torch_runner import TorchRunner

    torch_device = "cuda" if device == "gpu" else device
    runners: list[Any] = [
        TorchRunner("torch", foreach=False, fused=False, device=torch_device),
        TorchRunner("torch-foreach", foreach=True, fused=False, device=torch_device),
        TorchRunner("torch-fused", foreach=False, fused=True, kernel_min_numel=2, device=torch_device),
    ]
    try:
        from sai_conformance.runners.jax_runner import JaxRunner

        runners.append(JaxRunner("jax-jit", jit=True))
    except ImportError as error:  # pragma: no cover - JAX is part of the dev environment
        print(f"JAX runner unavailable: {error}")
    cases = load_cases()
    if tiny:
        cases = cases[:TINY_CASES]
    rows = []
    for runner in runners:
        started = time.perf_counter()
        counts = {"pass": 0, "fail": 0, "n/a": 0, "xfail": 0, "xpass": 0}
        failures = []
        for case in cases:
            for mode in MODES:
                try:
                    result = check_case(runner, case, mode)
                    status, detail = result.status, result.detail
                except Exception as error:  # noqa: BLE001 - reported, never fatal
                    status, detail = "fail", f"{case.name} {mode}: {type(error).__name__}: {error}"
                counts[status] += 1
                if status in ("fail", "xpass"):
                    failures.append(detail)
        rows.append(
            {
                "runner": runner.name,
                "device": torch_device if runner.name.startswith("torch") else _jax_device(),
                "counts": counts,
                "failures": failures[:5],
                "seconds": time.perf_counter() - started,
            }
        )
    return rows


def _jax_device() -> str:
    import jax

    return f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}"


def benchmarks(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    """Runs the torch and JAX step benchmarks (subprocesses) and returns their JSON results."""
    torch_device = "cuda" if device == "gpu" else device
    torch_command = [
        sys.executable,
        str(HERE / "torch_step.py"),
        "--only",
        "large",
        "--no-port",
        "--no-memory",
        "--device",
        torch_device,
        "--json",
        str(tmp / "torch.json"),
        *(TINY_TORCH if tiny else ["--steps", "15", "--warmup", "3"]),
    ]
    jax_command = [
        sys.executable,
        str(HERE / "jax_step.py"),
        "--json",
        str(tmp / "jax.json"),
        *(TINY_JAX if tiny else ["--rounds", "15"]),
    ]
    out: dict[str, Any] = {}
    for name, command in (("torch", torch_command), ("jax", jax_command)):
        env = None
        if name == "jax" and device == "cpu":
            import os

            env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        path = tmp / f"{name}.json"
        if done.returncode != 0 or not path.exists():
            out[name] = {"error": f"exit {done.returncode}: {done.stderr[-1500:]}"}
        else:
            out[name] = json.loads(path.read_text())
    return out


def table(conformance: list[dict[str, Any]], bench: dict[str, Any], device: str) -> tuple[str, bool]:
    """The one table the check prints, and whether everything passed."""
    ok = True
    lines = [f"GPU check ({device})", "", f"{'item':<46} {'result':<44}", "-" * 90]
    for row in conformance:
        c = row["counts"]
        good = c["fail"] == 0 and c["xpass"] == 0
        ok = ok and good
        lines.append(
            f"{'conformance ' + row['runner'] + ' on ' + row['device']:<46} "
            f"{c['pass']} pass, {c['fail']} fail, {c['n/a']} n/a, {c['xfail']} xfail  ({row['seconds']:.0f} s)"
            + ("" if good else "  FAILED")
        )
        for failure in row["failures"]:
            lines.append(f"    {failure[:300]}")
    torch_result = bench.get("torch", {})
    if "error" in torch_result:
        ok = False
        lines.append(f"{'torch step benchmark':<46} FAILED: {torch_result['error'][-300:]}")
    elif torch_result:
        large = torch_result["large"]
        m = large["medians_s"]
        scale = m["in-place scale (bandwidth)"]
        bandwidth = 2 * large["param_bytes"] / scale / 1e9
        lines.append(
            f"{'torch ' + str(large['tensors']) + ' tensors, ' + format(large['numel'] / 1e6, '.1f') + 'M params':<46} "
            f"in-place pass {1e3 * scale:.3f} ms = {bandwidth:.0f} GB/s"
        )
        for name in ("AdamW(fused=True)", "SGDSaI default", "SGDSaI fused=True"):
            if name in m:
                fraction = (2.5 if name.startswith("SGDSaI") else 3.5) * scale / m[name]
                lines.append(
                    f"{'  ' + name:<46} {1e3 * m[name]:.3f} ms, {m[name] / m['AdamW(fused=True)']:.3f}x AdamW fused, "
                    f"{100 * fraction:.0f}% of in-place bandwidth"
                )
    jax_result = bench.get("jax", {})
    if "error" in jax_result:
        ok = False
        lines.append(f"{'JAX step benchmark':<46} FAILED: {jax_result['error'][-300:]}")
    elif jax_result:
        t = jax_result["medians_s"]
        stream = 3 * jax_result["param_bytes"] / t["stream"]
        lines.append(
            f"{'JAX ' + str(jax_result['leaves']) + ' leaves on ' + jax_result['meta']['device']:<46} "
            f"stream {1e3 * t['stream']:.3f} ms = {stream / 1e9:.0f} GB/s"
        )
        for name, moved in (("adamw", 7), ("sgd", 5), ("sai", 5), ("sai first", None)):
            extra = (
                ""
                if moved is None
                else f", {100 * moved * jax_result['param_bytes'] / t[name] / stream:.0f}% of stream bandwidth"
            )
            lines.append(f"{'  ' + name:<46} {1e3 * t[name]:.3f} ms, {t[name] / t['adamw']:.3f}x optax.adamw{extra}")
    lines.append("-" * 90)
    lines.append("all passed" if ok else "SOME CHECKS FAILED")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=("gpu", "cpu"),
        default="gpu",
        help="gpu: CUDA, GPT-2 small (default); cpu: tiny sizes, a test of this script",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    parser.add_argument("--skip-conformance", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    tiny = args.device == "cpu"
    if args.device == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: torch sees no CUDA device (use --device cpu to exercise the script on the CPU)")
            return 2
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}", flush=True)
    started = time.perf_counter()
    conformance = [] if args.skip_conformance else conformance_rows("cuda" if args.device == "gpu" else "cpu", tiny)
    with tempfile.TemporaryDirectory() as tmp:
        bench = {} if args.skip_bench else benchmarks(args.device, tiny, Path(tmp))
    text, ok = table(conformance, bench, args.device)
    print(text)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"conformance": conformance, "bench": bench, "ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
