"""Text and Markdown renderings: the identify verdict, the run table and the ports report card."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from sai_core import DEFAULT_PRESET, KNOB_VALUES, resolve_config

from ._harness import CaseResult, summarize
from ._identify import Identification
from ._probes import PROBE_BY_KEY, PROBES

__all__ = [
    "Progress",
    "format_check",
    "format_identification",
    "markdown_run_table",
    "ports_markdown",
    "ports_text",
]

_CONTRACT = resolve_config(DEFAULT_PRESET).knobs()


class Progress:
    """A one-line progress bar on a terminal (stderr by default); silent when not a terminal.

    Examples:
        >>> import io
        >>> bar = Progress(3, stream=io.StringIO())  # not a terminal: draws nothing
        >>> bar.show("numpy shapes-paper-float64"); bar.advance(); bar.close()
    """

    def __init__(
        self, total: int, *, stream: TextIO | None = None, enabled: bool | None = None, width: int = 24
    ) -> None:
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.perf_counter()

    def show(self, label: str) -> None:
        """Redraws the bar with ``label`` (what is running now)."""
        if not self.enabled:
            return
        filled = int(self.width * min(self.done, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {time.perf_counter() - self.started:5.1f}s {label}"
        self.stream.write("\r" + line[:110].ljust(110))
        self.stream.flush()

    def advance(self, label: str = "", count: int = 1) -> None:
        """Counts ``count`` finished units and redraws."""
        self.done += count
        self.show(label)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 110 + "\r")
            self.stream.flush()


def _mark(ok: bool) -> str:
    return "  " if ok else "! "


def format_identification(result: Identification) -> str:
    """The terminal report of ``identify``: the verdict and every deviation, the golden cases, the
    knobs, then every probe."""
    lines = [
        f"{result.target}: {result.description}",
        f"(probes in {result.dtype}, the bf16 probe in bfloat16; each call into the target may take "
        f"{result.timeout:g} s)",
        "",
        f"verdict: {result.summary()}",
    ]
    if result.deviations:
        what = f" from preset {result.preset}" if result.preset else ""
        count = len(result.deviations)
        lines.append(f"  {count} deviation{'s' if count != 1 else ''}{what}:")
        lines += [f"  ! {deviation}" for deviation in result.deviations]
    elif result.preset is not None:
        lines.append(f"  no deviation from preset {result.preset}")
    if result.preset is not None and result.preset != DEFAULT_PRESET and result.unclean:
        items = ", ".join(f"{PROBE_BY_KEY[o.probe].title} ({o.value})" for o in result.unclean)
        lines.append(f"  differs from the contract ({DEFAULT_PRESET}, docs/spec.md) on: {items}")
    lines.append(
        f"  exit status {0 if result.agrees else 1}: "
        + ("it agrees with its preset" if result.agrees else "a deviation, a failing case or no exact preset")
    )
    lines.append("")
    lines.append(f"golden cases per preset ({result.dtype}, trajectory from the initial parameters):")
    lines.append(f"  {'preset':<22}{'pass':>5}{'fail':>6}{'error':>7}{'timeout':>9}{'n/a':>5}")
    for preset, score in result.scores.items():
        tag = "  <- exact" if score.exact else ""
        lines.append(
            f"  {preset:<22}{score.passed:>5}{score.failed:>6}{score.errors:>7}{score.timeouts:>9}"
            f"{score.not_applicable:>5}{tag}"
        )
    lines.append("")
    lines.append("knobs measured by the probes:")
    if result.knobs is None:
        lines.append("  (not measurable: the g-SNR probe measured no scale a statistic explains)")
    else:
        for knob, values in result.knobs.items():
            shown = "any" if len(values) == len(KNOB_VALUES[knob]) else " or ".join(str(v) for v in values)
            note = "" if _CONTRACT[knob] in values else f"({DEFAULT_PRESET}: {_CONTRACT[knob]})"
            lines.append(f"  {knob:<16}{shown:<28}{note}".rstrip())
    lines.append("")
    lines.append("probes (! = not what docs/spec.md requires):")
    width = max(len(o.value) for o in result.outcomes.values()) + 2
    for probe in PROBES:
        outcome = result.outcomes[probe.key]
        lines.append(f"  {_mark(outcome.clean)}{probe.title:<22}{outcome.value:<{width}}{outcome.detail}")
    ran = [o for o in result.outcomes.values() if o.applicable]
    if not ran:
        lines.append("  no probe could run on this target")
    lines.append(f"({result.seconds:.1f} s)")
    return "\n".join(lines)


def format_check(target: str, preset: str, results: Sequence[CaseResult]) -> str:
    """The terminal report of ``check``: one line per case, then the count."""
    # Both columns as wide as their longest entry (case names reach 43 characters), so rows align.
    width = max([len("case"), *(len(r.case) for r in results)]) + 2
    status_width = max([len("result"), *(len(r.status) for r in results)]) + 2
    lines = [f"{'case':<{width}}{'result':<{status_width}}detail"]
    for r in results:
        detail = r.detail.split(" Rerun: ")[0] if r.status != "pass" else ""
        if r.status in ("fail", "error", "timeout"):
            detail = detail.split("): ", 1)[-1]
        lines.append(f"{r.case:<{width}}{r.status:<{status_width}}{detail}")
    ran = [r for r in results if r.status != "n/a"]
    passed = sum(r.status == "pass" for r in ran)
    lines.append("")
    verdict = "PASS" if all(r.ok for r in results) and ran else "FAIL"
    skipped = len(results) - len(ran)
    lines.append(f"{target} vs preset {preset}: {passed}/{len(ran)} cases pass, {skipped} not applicable: {verdict}")
    for r in results:
        if r.status in ("fail", "error", "timeout"):
            lines.append(f"  rerun {r.case}: {r.detail.split(' Rerun: ')[-1]}")
    return "\n".join(lines)


def markdown_run_table(results: Sequence[CaseResult]) -> str:
    """``run --markdown``: pass counts per runner and mode, then every failure."""
    lines = ["| runner | one-step | trajectory | n/a | xfail | verdict |", "|---|---|---|---|---|---|"]
    for row in summarize(results):
        verdict = "PASS" if row.ok else "**FAIL**"
        lines.append(
            f"| {row.runner} | {row.passed[0]} | {row.passed[1]} | {row.not_applicable} | {row.xfails} | {verdict} |"
        )
    failures = [r for r in results if not r.ok]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- `{r.runner}` `{r.case}` {r.mode}: {r.detail}" for r in failures]
    return "\n".join(lines) + "\n"


# -- the ports report card -------------------------------------------------------------------

PORT_COLUMNS: tuple[str, ...] = ("port", "version", "runs on", "preset")
TIME_COLUMN = "time (s)"


def _preset_cell(result: Identification) -> str:
    if result.preset is None:
        return "none"
    if result.exact:
        return f"{result.preset}"
    changes = ", ".join(f"{k}={v[0]}" for k, v in result.knob_differences.items())
    return f"~{result.preset}" + (f" ({changes})" if changes else "")


def _cell(text: str) -> str:
    # A pipe inside a Markdown table cell ends the cell unless escaped (``||g||``).
    return text.replace("|", "\\|")


# One report-card row: (port, version, runs on, its identification or the error that stopped it).
Entry = tuple[str, str, str, "Identification | str"]


def port_rows(entries: Sequence[Entry], *, markdown: bool = True) -> list[list[str]]:
    """Table rows: port, version, backend, preset, one cell per probe, seconds.

    ``entries`` holds ``(port, version, runs on, identification or error text)``. With
    ``markdown``, pipes are escaped and answers that are not the contract's are in bold.
    """
    cell = _cell if markdown else str

    def answer(outcome) -> str:
        return cell(outcome.value) if outcome.clean or not markdown else f"**{cell(outcome.value)}**"

    rows = []
    for port, version, runs_on, result in entries:
        if isinstance(result, str):
            rows.append([port, version, runs_on, cell(f"error: {result}")] + ["-"] * len(PROBES) + ["-"])
            continue
        cells = [port, version, runs_on, cell(_preset_cell(result))]
        cells += [answer(result.outcomes[probe.key]) for probe in PROBES]
        cells.append(f"{result.seconds:.1f}")
        rows.append(cells)
    return rows


def _header() -> list[str]:
    return [*PORT_COLUMNS, *(p.title for p in PROBES), TIME_COLUMN]


def ports_markdown(entries: Sequence[Entry], *, missing: Sequence[str] = ()) -> str:
    """The report card as the Markdown page committed at ``docs/ports.md``."""
    header = _header()
    lines = [
        "<!-- Generated by `sai-conformance ports --markdown docs/ports.md`; do not edit by hand.",
        "     tests/test_identify.py regenerates this page and compares it (the time column excluded). -->",
        "",
        "# SGD-SaI ports: the report card",
        "",
        "Every installed port, identified by `sai-conformance identify` (see [conformance.md](conformance.md)):",
        "the **preset** column names the preset whose golden cases it reproduces exactly (`~preset (knob=value)`:",
        "no exact match; the closest preset and the knobs the probes measured differently). The other columns",
        'are the behaviour probes of [SPEC "Conformance"](spec.md); an answer in **bold** is not what the',
        "contract ([docs/spec.md](spec.md)) requires. Measured on CPU; nothing here is typed in by hand.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in port_rows(entries):
        lines.append("| " + " | ".join(row) + " |")
    if missing:
        lines += ["", "Not installed here (no row): " + ", ".join(f"`{m}`" for m in missing) + "."]
    lines += [
        "",
        "## What each probe asks",
        "",
        "| probe | question | the contract's answer | cost |",
        "|---|---|---|---|",
    ]
    for probe in PROBES:
        lines.append(f"| {probe.title} | {_cell(probe.question)} | {_cell(probe.clean)} | {probe.cost} |")
    lines += [
        "",
        "Probe answers: `error: X` the port raised X; `timeout` a call did not return within `--timeout`",
        "seconds (`not run`: a later probe, not attempted after it); `n/a` the framework cannot express",
        "the probe (optax has no absent gradient and no parameter groups, only torch has closures, only",
        "Keras has `model.fit`, a port without `maximize`).",
        f"In the g-SNR column `{DEFAULT_PRESET}` means the per-block scales equal the default preset's;",
        "otherwise the knob values (away from it) that reproduce them.",
        "",
        "## Golden cases per preset",
        "",
        "Passed / ran (errors: the port raised) of each preset's golden cases, trajectory mode.",
        "",
    ]
    presets = None
    for port, _version, runs_on, result in entries:
        if isinstance(result, str):
            continue
        if presets is None:
            presets = list(result.scores)
            lines += ["| port | runs on | " + " | ".join(presets) + " |", "|---|---|" + "---|" * len(presets)]
        cells = []
        for preset in presets:
            score = result.scores[preset]
            ran = score.passed + score.failed + score.errors
            cells.append(f"{score.passed}/{ran}" + (f" ({score.errors} raised)" if score.errors else ""))
        lines.append(f"| {port} | {runs_on} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def without_timings(markdown: str) -> str:
    r"""``markdown`` with the cells of the time column emptied (what the docs test compares).

    Examples:
        >>> without_timings("| port | time (s) |\n|---|---|\n| a | 1.5 |\n")
        '| port | |\n|---|---|\n| a | |\n'
    """
    lines, column = markdown.split("\n"), None
    for index, line in enumerate(lines):
        if not line.startswith("|"):
            column = None
            continue
        cells = re.split(r"(?<!\\)\|", line)  # escaped pipes (\|) stay inside their cell
        if column is None and f" {TIME_COLUMN} " in cells:
            column = cells.index(f" {TIME_COLUMN} ")
        if column is not None and not set(cells[column]) <= {"-"}:
            cells[column] = " "
            lines[index] = "|".join(cells)
    return "\n".join(lines)


def ports_text(entries: Sequence[Entry]) -> str:
    """The report card for a terminal: one block per port (``!``: not the contract's answer)."""
    lines = []
    for (port, version, runs_on, result), row in zip(entries, port_rows(entries, markdown=False)):
        cells = dict(zip(_header(), row))
        lines.append(f"{port} ({version}, {runs_on}): {cells['preset']}   [{cells[TIME_COLUMN]} s]")
        if isinstance(result, str):
            continue
        for probe in PROBES:
            outcome = result.outcomes[probe.key]
            lines.append(f"    {_mark(outcome.clean)}{probe.title:<17}{outcome.value}")
    return "\n".join(lines)
