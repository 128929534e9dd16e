"""Replay harness: the runner protocol, one-step and trajectory comparisons, and the report table.

A *runner* adapts one backend to the golden cases. It builds its optimizer for a case's blocks and
groups, loads a :class:`Snapshot` of state, applies steps with the case's gradients and
hyperparameters, and returns the state after each step as float64 snapshots.

* one-step: every step starts from the reference's state before it (tight tolerance);
* trajectory: the runner takes all steps on its own from the initial parameters (bounded drift).

Runner modules live in :mod:`sai_conformance.runners`; each one declares the import names it
``REQUIRES`` and a ``runners()`` function. A module whose requirements are not installed is
skipped; one whose requirements are installed but that fails to import raises. A module that
declares ``ISOLATED = True`` (Keras: one backend per process) is only loaded when asked for with
``include_isolated=True``, inside the subprocess that owns that backend.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ._golden import Case, Snapshot
from ._known_failures import known_failure
from ._tolerances import TOLERANCES

__all__ = [
    "MODES",
    "CaseResult",
    "Runner",
    "available_runners",
    "check_case",
    "format_table",
    "rerun_command",
]

MODES: tuple[str, ...] = ("one_step", "trajectory")


@runtime_checkable
class Runner(Protocol):
    """What a backend implements to be replayed against the golden vectors."""

    name: str

    def not_applicable(self, case: Case) -> str | None:
        """Why this runner cannot express ``case`` (e.g. no bfloat16), or ``None``."""

    def run(self, case: Case, start: Snapshot, first_step: int, num_steps: int) -> list[Snapshot]:
        """Loads ``start``, applies steps ``first_step .. first_step + num_steps - 1``.

        Returns the state after each applied step, converted to float64 NumPy.
        """


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """Outcome of one runner on one case in one mode."""

    runner: str
    case: str
    mode: str
    status: str  # "pass", "fail", "n/a", "xfail", "xpass"
    detail: str = ""
    step: int | None = None
    block: int | None = None
    field: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "n/a", "xfail")


def rerun_command(runner: str, case: str, mode: str) -> str:
    """The command that reruns exactly one runner, case and mode."""
    return f"sai-conformance run --backend {runner} --case {case} --mode {mode}"


@dataclasses.dataclass(frozen=True)
class _Mismatch:
    step: int
    block: int | None
    field: str
    max_abs: float
    max_rel: float
    rtol: float
    note: str = ""


def _compare_array(actual, expected, rtol: float, tiny: float) -> tuple[float, float, bool]:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf"), float("inf"), False
    if not np.all(np.isfinite(actual)):
        return float("inf"), float("inf"), False
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    reference = float(np.max(np.abs(expected))) if expected.size else 0.0
    rel = diff / reference if reference > 0 else (0.0 if diff == 0 else float("inf"))
    return diff, rel, diff <= rtol * reference + tiny


def compare_snapshots(actual: Snapshot, expected: Snapshot, *, step: int, rtol: float, tiny: float) -> list[_Mismatch]:
    """Every field of ``actual`` that is outside the tolerance of ``expected``."""
    mismatches: list[_Mismatch] = []
    if len(actual.params) != len(expected.params):
        return [_Mismatch(step, None, "params", np.inf, np.inf, rtol, "block count differs")]
    fields = (
        ("params", actual.params, expected.params),
        ("momentum_buffer", actual.momentum_buffer, expected.momentum_buffer),
    )
    for name, got, want in fields:
        for block, (a, e) in enumerate(zip(got, want)):
            if (a is None) != (e is None):
                note = f"expected {'no ' if e is None else ''}{name}, got {'none' if a is None else 'one'}"
                mismatches.append(_Mismatch(step, block, name, np.inf, np.inf, rtol, note))
                continue
            if a is None:
                continue
            abs_err, rel_err, ok = _compare_array(a, e, rtol, tiny)
            if not ok:
                mismatches.append(_Mismatch(step, block, name, abs_err, rel_err, rtol))
    scalars = [("scale", i, a, e) for i, (a, e) in enumerate(zip(actual.scale, expected.scale))]
    scalars.append(("max_gsnr", None, actual.max_gsnr, expected.max_gsnr))
    for name, block, a, e in scalars:
        if (a is None) != (e is None):
            note = f"expected {name} {'unset' if e is None else 'set'}, got {'unset' if a is None else 'set'}"
            mismatches.append(_Mismatch(step, block, name, np.inf, np.inf, rtol, note))
            continue
        if a is None:
            continue
        abs_err, rel_err, ok = _compare_array(a, e, rtol, tiny)
        if not ok:
            mismatches.append(_Mismatch(step, block, name, abs_err, rel_err, rtol))
    return mismatches


def _run_mode(runner: Runner, case: Case, mode: str) -> list[tuple[Snapshot, Snapshot, int]]:
    if mode == "one_step":
        pairs = []
        for step in range(case.num_steps):
            (got,) = runner.run(case, case.snapshot_before(step), step, 1)
            pairs.append((got, case.expected[step], step))
        return pairs
    got = runner.run(case, case.snapshot_before(0), 0, case.num_steps)
    if len(got) != case.num_steps:
        raise RuntimeError(f"runner returned {len(got)} snapshots for {case.num_steps} steps")
    return [(g, e, step) for step, (g, e) in enumerate(zip(got, case.expected))]


def check_case(runner: Runner, case: Case, mode: str) -> CaseResult:
    """Replays ``case`` on ``runner`` in ``mode`` and compares with the golden state."""
    if mode not in MODES:
        raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
    reason = runner.not_applicable(case)
    if reason is not None:
        return CaseResult(runner.name, case.name, mode, "n/a", reason)
    tolerance = TOLERANCES[case.dtype]
    rtol = tolerance.rtol(mode)
    expected_failure = known_failure(runner.name, case.name)
    mismatches: list[_Mismatch] = []
    for got, want, step in _run_mode(runner, case, mode):
        mismatches = compare_snapshots(got, want, step=step, rtol=rtol, tiny=tolerance.tiny)
        if mismatches:
            break
    if not mismatches:
        if expected_failure is not None:
            return CaseResult(runner.name, case.name, mode, "xpass", f"listed as known failure: {expected_failure}")
        return CaseResult(runner.name, case.name, mode, "pass")
    worst = max(mismatches, key=lambda m: m.max_rel)
    where = "all blocks" if worst.block is None else f"block {worst.block} {case.shapes[worst.block]}"
    detail = (
        f"backend {runner.name}, case {case.name} ({case.dtype}, {mode}): step {worst.step + 1}, {where}, "
        f"{worst.field}: max abs err {worst.max_abs:.3g}, max rel err {worst.max_rel:.3g} "
        f"(rtol {worst.rtol:g}){'; ' + worst.note if worst.note else ''}; "
        f"{len(mismatches)} field(s) out of tolerance at this step. "
        f"Rerun: {rerun_command(runner.name, case.name, mode)}"
    )
    status = "xfail" if expected_failure is not None else "fail"
    return CaseResult(
        runner.name, case.name, mode, status, detail, worst.step, worst.block, worst.field, worst.max_abs, worst.max_rel
    )


def available_runners(names: Iterable[str] | None = None, *, include_isolated: bool = False) -> list[Runner]:
    """Runners of every installed backend (optionally only those named).

    Args:
        names: keep only these runner names (unknown names raise ``ValueError``).
        include_isolated: also load modules declaring ``ISOLATED = True``.
    """
    from . import runners as package

    found: list[Runner] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        spec = importlib.util.find_spec(f"{package.__name__}.{info.name}")
        module_requires = _declared(spec, "REQUIRES", None)
        if module_requires is None:
            raise ValueError(f"runner module {spec.name} does not declare REQUIRES = (...)")
        if _declared(spec, "ISOLATED", False) and not include_isolated:
            continue
        if any(importlib.util.find_spec(req) is None for req in module_requires):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found.extend(module.runners())
    if names is not None:
        wanted = list(names)
        unknown = sorted(set(wanted) - {r.name for r in found})
        if unknown:
            raise ValueError(f"Invalid runner name(s): {unknown} (available: {[r.name for r in found]})")
        found = [r for r in found if r.name in wanted]
    return found


def _declared(spec, name: str, default):
    # Module constants are read from the source without importing it, so that a missing (or
    # process-exclusive) framework is never imported just to learn that it should be skipped.
    import ast

    source = spec.loader.get_source(spec.name) or ""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    return default


@dataclasses.dataclass(frozen=True)
class RunnerSummary:
    """One runner's row of a results table."""

    runner: str
    passed: tuple[str, ...]  # "passed/ran" per mode, in MODES order
    not_applicable: int  # cases (not case-mode pairs) the runner cannot express
    xfails: int
    ok: bool


def summarize(results: Sequence[CaseResult]) -> list[RunnerSummary]:
    """Pass counts per runner and mode, in the order the runners first appear."""
    summaries = []
    for name in dict.fromkeys(r.runner for r in results):
        rows = [r for r in results if r.runner == name]
        cells = []
        for mode in MODES:
            ran = [r for r in rows if r.mode == mode and r.status != "n/a"]
            cells.append(f"{sum(r.status == 'pass' for r in ran)}/{len(ran)}")
        summaries.append(
            RunnerSummary(
                runner=name,
                passed=tuple(cells),
                not_applicable=sum(r.status == "n/a" for r in rows) // len(MODES),
                xfails=sum(r.status == "xfail" for r in rows),
                ok=all(r.ok for r in rows),
            )
        )
    return summaries


def format_table(results: Sequence[CaseResult]) -> str:
    """A plain-text table: one row per runner, pass counts per mode, then every failure."""
    header = f"{'runner':<22} {'one-step':>12} {'trajectory':>12} {'n/a':>5} {'xfail':>6}  verdict"
    lines = [header, "-" * len(header)]
    for row in summarize(results):
        verdict = "PASS" if row.ok else "FAIL"
        lines.append(
            f"{row.runner:<22} {row.passed[0]:>12} {row.passed[1]:>12} {row.not_applicable:>5} {row.xfails:>6}  {verdict}"
        )
    failures = [r for r in results if not r.ok]
    if failures:
        lines.append("")
        lines.append("failures:")
        lines += [f"  {r.detail or r.status}" for r in failures]
    return "\n".join(lines)
