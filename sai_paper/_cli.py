"""``python -m sai_paper`` (``make paper-check``): run the protocol and write the page.

``--quick`` is a short version of everything (1 seed, 3 learning rates, short runs); ``--smoke``
is the test suite's tiny one. The full run writes ``docs/paper-check.md``, ``docs/paper_lr.png``
and ``docs/paper_gsnr.png``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

__all__ = ["main"]

_TASKS = ("gpt", "mlp", "cnn")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m sai_paper", description=(__doc__ or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 seed, 3 learning rates, short runs (about a minute)")
    size.add_argument("--smoke", action="store_true", help="the test suite's tiny configuration (seconds)")
    parser.add_argument("--out", default="docs", help="folder of the page and its charts (default docs/)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes (default 2; 1 runs everything in this process)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (default 1: on a shared machine, as the demo measured, 1 thread per "
        "process was faster than 2)",
    )
    parser.add_argument("--tasks", default=",".join(_TASKS), help=f"comma-separated subset of {','.join(_TASKS)}")
    return parser


def _run_all(jobs: Sequence[Any], workers: int, threads: int) -> list[dict[str, Any]]:
    from ._protocol import run_job

    results = []
    began = time.perf_counter()

    def report(done: int, job: Any) -> None:
        print(
            f"[{time.perf_counter() - began:6.0f} s] {done}/{len(jobs)} {job.task} seed {job.seed} {job.optimizer}",
            flush=True,
        )

    if workers == 1:
        for done, job in enumerate(jobs, 1):
            results.append(run_job(job, threads))
            report(done, job)
        return results
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked OpenMP state
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_job, job, threads): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            results.append(future.result())
            report(done, futures[future])
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the check and writes the page; returns the exit status."""
    args = build_parser().parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(_TASKS))
    if unknown or not tasks:
        print(f"sai-paper: error: Invalid --tasks: {args.tasks!r} (expected names from {_TASKS})", file=sys.stderr)
        return 2
    for name in ("workers", "threads"):
        if getattr(args, name) < 1:
            print(f"sai-paper: error: Invalid --{name}: {getattr(args, name)} (must be >= 1)", file=sys.stderr)
            return 2
    began = time.perf_counter()
    load_start = os.getloadavg()[0]
    import torch

    torch.set_num_threads(args.threads)

    from ._page import write_page
    from ._protocol import PROFILES, jobs

    profile = PROFILES["quick" if args.quick else "smoke" if args.smoke else "full"]
    todo = jobs(profile, tasks)
    print(
        f"sai-paper: {profile.name} profile, {len(todo)} jobs ({len(tasks)} tasks x {len(profile.seeds)} seeds x "
        f"4 optimizers) in {args.workers} worker(s), load average {load_start:.2f}",
        flush=True,
    )
    results = _run_all(todo, args.workers, args.threads)
    runs = [run for result in results for run in result["runs"]]
    reports = {}
    for result in results:
        if result["gsnr"] is not None:
            reports[result["runs"][0].task] = result["gsnr"]
    titles = {result["runs"][0].task: result["title"] for result in results}
    describe = {result["runs"][0].task: result["describe"] for result in results}
    command = "python -m sai_paper" + (" --quick" if args.quick else " --smoke" if args.smoke else "")
    environment = {
        "wall_s": time.perf_counter() - began,
        "runs": len(runs),
        "workers": args.workers,
        "threads": args.threads,
        "train_s": sum(run.seconds for run in runs),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }
    path = write_page(
        Path(args.out),
        runs,
        tasks=tasks,
        titles=titles,
        describe=describe,
        reports=reports,
        offsets=profile.offsets,
        seeds=profile.seeds,
        environment=environment,
        command=command,
    )
    print(f"sai-paper: wrote {path} and its charts in {time.perf_counter() - began:.0f} s", flush=True)
    return 0
