"""From run results to ``paper-check.md``: the aggregates, the tables, the charts, the conclusions.

Every sentence of the conclusions is computed from the numbers with the rules printed on the page:

- An lr is *usable* for an optimizer when none of its seeds diverged; its *best* lr is the usable
  grid lr with the lowest mean final validation loss (selected on the validation set, the same way
  for every optimizer).
- Two mean losses differ when the gap exceeds the seed noise ``sqrt(sd_a**2 + sd_b**2)`` (sample
  standard deviations over seeds); otherwise they *match*.
- An lr is *near-best* when its mean final loss is within 5% of the optimizer's own best.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sai_core import GsnrReport

from ._protocol import OPTIMIZERS, RunResult, grid

__all__ = ["Cell", "aggregate", "gsnr_summary", "write_page"]

SAME_RUN = 0.01  # the conversion "held" on a (task, lr) when the two mean final losses are within 1%
NEAR_BEST = 0.05  # "near-best": within 5% of the optimizer's own best mean final loss
_LABEL = {spec.key: spec.label for spec in OPTIMIZERS}
_COLOR = {"sgd-sai": "C0", "paper": "C2", "adamw": "C1", "sgd": "C3"}


def _mean(values: Sequence[float]) -> float:
    return math.nan if not values or any(not math.isfinite(v) for v in values) else statistics.fmean(values)


def _sd(values: Sequence[float]) -> float:
    if len(values) < 2 or any(not math.isfinite(v) for v in values):
        return 0.0 if len(values) == 1 and math.isfinite(values[0]) else math.nan
    return statistics.stdev(values)


@dataclasses.dataclass
class Cell:
    """All seeds of one (task, optimizer, lr)."""

    task: str
    optimizer: str
    lr: float
    on_grid: bool
    default: bool
    runs: list[RunResult]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def diverged(self) -> int:
        """How many seeds diverged."""
        return sum(r.diverged for r in self.runs)

    @property
    def usable(self) -> bool:
        return self.diverged == 0

    def stat(self, name: str) -> tuple[float, float, float, float]:
        """Mean, sample sd, min and max over seeds of a ``RunResult`` property (NaN if any is NaN)."""
        values = [getattr(r, name) for r in self.runs]
        finite = all(math.isfinite(v) for v in values)
        low, high = (min(values), max(values)) if finite else (math.nan, math.nan)
        return _mean(values), _sd(values), low, high


def aggregate(runs: Iterable[RunResult]) -> list[Cell]:
    """Groups runs by (task, optimizer, lr, on grid), in task, optimizer and lr order."""
    cells: dict[tuple[str, str, float, bool], Cell] = {}
    for run in runs:
        key = (run.task, run.optimizer, run.lr, run.on_grid)
        cell = cells.setdefault(key, Cell(run.task, run.optimizer, run.lr, run.on_grid, run.default, []))
        cell.runs.append(run)
    order = {spec.key: i for i, spec in enumerate(OPTIMIZERS)}
    return sorted(cells.values(), key=lambda c: (c.task, order[c.optimizer], not c.on_grid, c.lr))


def _fmt(mean: float, sd: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "NaN"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _pct(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{100 * mean:.1f} ± {100 * sd:.1f}%"


def _lr(value: float) -> str:
    return f"{value:.2g}"


def _bytes(count: float) -> str:
    return f"{int(count):,} B"


@dataclasses.dataclass
class Summary:
    """One optimizer on one task: its best grid lr, its default run, its robustness."""

    task: str
    optimizer: str
    best: Cell | None
    default: Cell | None
    near_best: int
    grid_size: int
    diverged_lrs: int
    state_bytes: int
    param_bytes: int


def summarize(cells: Sequence[Cell], task: str, optimizer: str) -> Summary:
    """The :class:`Summary` of ``optimizer`` on ``task``."""
    mine = [c for c in cells if c.task == task and c.optimizer == optimizer]
    on_grid = [c for c in mine if c.on_grid]
    usable = [c for c in on_grid if c.usable and math.isfinite(c.stat("final_loss")[0])]
    best = min(usable, key=lambda c: c.stat("final_loss")[0]) if usable else None
    defaults = [c for c in mine if c.default]
    near = 0
    if best is not None:
        limit = best.stat("final_loss")[0] * (1 + NEAR_BEST)
        near = sum(1 for c in usable if c.stat("final_loss")[0] <= limit)
    reference = defaults[0] if defaults else mine[0]
    return Summary(
        task,
        optimizer,
        best,
        defaults[0] if defaults else None,
        near,
        len(on_grid),
        sum(1 for c in on_grid if not c.usable),
        reference.runs[0].state_bytes,
        reference.runs[0].param_bytes,
    )


def _compare(a: Cell | None, b: Cell | None) -> tuple[str, float]:
    """``("beats" | "matches" | "loses", relative gap)`` of ``a`` against ``b`` on mean final loss."""
    if a is None or b is None:
        return ("cannot be compared", math.nan)
    (ma, sa, _, _), (mb, sb, _, _) = a.stat("final_loss"), b.stat("final_loss")
    if not math.isfinite(ma) and not math.isfinite(mb):
        return ("matches (both diverged)", math.nan)
    if not math.isfinite(ma):
        return ("loses to (it diverged)", math.inf)
    if not math.isfinite(mb):
        return ("beats (the other diverged)", -math.inf)
    gap = (ma - mb) / mb
    noise = math.hypot(sa if math.isfinite(sa) else 0.0, sb if math.isfinite(sb) else 0.0)
    if abs(ma - mb) <= noise:
        return ("matches", gap)
    return ("beats" if ma < mb else "loses to", gap)


def gsnr_summary(report: GsnrReport) -> dict[str, float]:
    """How much of ``G`` tensor size alone explains, for one report.

    Returns:
        ``r2_line``: R^2 of ``log G`` by the line ``log G = log sqrt(n)`` (no fitted parameter);
        ``r2_fit``: R^2 of the least-squares fit of ``log G`` on ``log sqrt(n)``, with ``slope``;
        ``ratio_min``/``ratio_median``/``ratio_max``: ``G / sqrt(n - 1)`` over tensors with ``n > 1``;
        ``tensors``: how many tensors have a ``G``.

    Examples:
        >>> import numpy as np
        >>> from sai_core import report_from_gradients, resolve_config
        >>> rng = np.random.default_rng(0)
        >>> grads = [rng.standard_normal(n) for n in (16, 256, 4096)]
        >>> report = report_from_gradients(["a", "b", "c"], grads, eps=1e-8, config=resolve_config(), framework="numpy")
        >>> round(gsnr_summary(report)["r2_line"], 2)
        1.0
    """
    rows = [r for r in report.rows if r.gsnr is not None and r.numel]
    xs = [math.log(r.sqrt_numel) for r in rows]
    ys = [math.log(r.gsnr) for r in rows if r.gsnr is not None]
    mean_y = statistics.fmean(ys)
    total = sum((y - mean_y) ** 2 for y in ys)
    residual_line = sum((y - x) ** 2 for x, y in zip(xs, ys))
    mean_x = statistics.fmean(xs)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx else math.nan
    residual_fit = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in zip(xs, ys)) if sxx else math.nan
    ratios = sorted(r.ratio for r in rows if r.ratio is not None)
    return {
        "r2_line": 1 - residual_line / total if total else math.nan,
        "r2_fit": 1 - residual_fit / total if total else math.nan,
        "slope": slope,
        "ratio_min": ratios[0] if ratios else math.nan,
        "ratio_median": statistics.median(ratios) if ratios else math.nan,
        "ratio_max": ratios[-1] if ratios else math.nan,
        "tensors": len(rows),
    }


def _lr_chart(path: Path, cells: Sequence[Cell], tasks: Sequence[str], titles: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), dpi=90, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        initial = statistics.fmean(r.initial_val_loss for c in cells if c.task == task for r in c.runs)
        ceiling = initial * 1.15
        for spec in OPTIMIZERS:
            mine = [c for c in cells if c.task == task and c.optimizer == spec.key and c.on_grid]
            if not mine:
                continue
            # paper is nudged right: with SPEC's conversion it lies on top of sgd-sai
            xs = [c.lr * (1.06 if spec.key == "paper" else 1.0) for c in mine]
            stats = [c.stat("final_loss") for c in mine]
            ys = [min(s[0], ceiling) if math.isfinite(s[0]) else ceiling for s in stats]
            low = [y - (min(s[2], ceiling) if math.isfinite(s[2]) else y) for y, s in zip(ys, stats)]
            high = [(min(s[3], ceiling) if math.isfinite(s[3]) else y) - y for y, s in zip(ys, stats)]
            label = spec.label + (" (x: lr / M)" if spec.key == "paper" else "")
            ax.errorbar(
                xs, ys, yerr=[low, high], color=_COLOR[spec.key], marker="o", markersize=4, capsize=2, label=label
            )
            bad = [(x, y) for x, y, c in zip(xs, ys, mine) if not c.usable]
            if bad:
                ax.scatter(*zip(*bad), marker="x", s=60, color=_COLOR[spec.key], zorder=4)
            default = [(x, y) for x, y, c in zip(xs, ys, mine) if c.default]
            if default:
                ax.scatter(*zip(*default), marker="*", s=150, color=_COLOR[spec.key], edgecolor="k", zorder=5)
        ax.axhline(initial, color="0.5", linestyle=":", linewidth=1, label="initial loss")
        ax.set_xscale("log")
        ax.set_ylim(top=ceiling * 1.02)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation loss (mean of seeds; bars: min-max)")
        ax.set_title(textwrap.fill(titles.get(task, task), 60), fontsize=8)
        ax.legend(fontsize=7)
    figure.suptitle("Final validation loss against lr. x: a seed diverged; star: default settings", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _gsnr_chart(path: Path, reports: dict[str, dict[str, GsnrReport]], tasks: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sai_gsnr import plot_report

    figure, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 7.6), dpi=90, squeeze=False)
    for column, task in enumerate(tasks):
        for row, when in enumerate(("init", "trained")):
            what = "at initialization" if when == "init" else "after training (sgd-sai, default lr)"
            plot_report(reports[task][when], ax=axes[row][column], title=f"{task}: G per tensor {what}")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _grid_table(offsets: Sequence[int]) -> list[str]:
    lines = ["| optimizer | learning rates (grid) | default-settings run | how chosen |", "|---|---|---|---|"]
    for spec in OPTIMIZERS:
        rates = ", ".join(_lr(lr) for lr in grid(spec, offsets))
        default = f"lr {_lr(spec.default_lr)}, weight decay {spec.weight_decay:g}"
        lines.append(f"| {spec.label} | {rates} | {default} | {spec.note} |")
    return lines


def _main_table(summaries: Sequence[Summary]) -> list[str]:
    lines = [
        "| task | optimizer | best lr | final val loss at best lr | val accuracy at best lr | "
        "default-settings final val loss | near-best lrs | diverged lrs | optimizer state |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        best = s.best
        best_lr = _lr(best.lr) if best else "none usable"
        best_loss = _fmt(*best.stat("final_loss")[:2]) if best else "-"
        best_acc = _pct(*best.stat("final_accuracy")[:2]) if best else "-"
        default = "-"
        if s.default is not None:
            default = _fmt(*s.default.stat("final_loss")[:2])
            if s.default.diverged:
                default += f" ({s.default.diverged} diverged)"
        state = f"{_bytes(s.state_bytes)} ({s.state_bytes / s.param_bytes:.2f}x params)"
        lines.append(
            f"| {s.task} | {_LABEL[s.optimizer]} | {best_lr} | {best_loss} | {best_acc} | {default} | "
            f"{s.near_best} of {s.grid_size} | {s.diverged_lrs} of {s.grid_size} | {state} |"
        )
    return lines


def _cell_table(cells: Sequence[Cell], task: str) -> list[str]:
    lines = [
        "| optimizer | lr | lr given | final val loss | best val loss | final val accuracy | best val accuracy | diverged seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        if c.task != task:
            continue
        used = sorted({_lr(r.lr_used) for r in c.runs}, key=float)
        given = used[0] if len(used) == 1 else f"{used[0]} to {used[-1]}"
        tag = " (default)" if c.default else ""
        if c.optimizer == "paper" and not c.on_grid:
            tag = " (default, unconverted)"
        stopped = [str(r.stopped_at) for r in c.runs if r.stopped_at is not None]
        diverged = f"{c.diverged} of {c.seeds}" + (f" (NaN at step {', '.join(stopped)})" if stopped else "")
        lines.append(
            f"| {_LABEL[c.optimizer]}{tag} | {_lr(c.lr)} | {given} | {_fmt(*c.stat('final_loss')[:2])} | "
            f"{_fmt(*c.stat('best_loss')[:2])} | {_pct(*c.stat('final_accuracy')[:2])} | "
            f"{_pct(*c.stat('best_accuracy')[:2])} | {diverged} |"
        )
    return lines


def _gap(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return f" ({100 * abs(value):.1f}% {'higher' if value > 0 else 'lower'})"


def _loss_of(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    mean, sd, _, _ = cell.stat("final_loss")
    return f"{_fmt(mean, sd)} at lr {_lr(cell.lr)}"


def recommend(cells: Sequence[Cell], tasks: Sequence[str], optimizer: str) -> tuple[float | None, float]:
    """The one grid lr of ``optimizer`` with the smallest worst-case excess over the tasks.

    Excess on a task: mean final loss at that lr over the optimizer's best on the task, minus 1. An
    lr at which any seed of any task diverged is not considered.

    Returns:
        ``(lr, worst excess)``; ``(None, nan)`` when no lr is usable on every task.
    """
    candidates: dict[float, float] = {}
    for task in tasks:
        summary = summarize(cells, task, optimizer)
        if summary.best is None:
            return None, math.nan
        best = summary.best.stat("final_loss")[0]
        for c in cells:
            if c.task == task and c.optimizer == optimizer and c.on_grid:
                mean = c.stat("final_loss")[0]
                excess = (mean / best - 1) if c.usable and math.isfinite(mean) else math.inf
                candidates[c.lr] = max(candidates.get(c.lr, 0.0), excess)
    usable = {lr: e for lr, e in candidates.items() if math.isfinite(e)}
    if not usable:
        return None, math.nan
    lr = min(usable, key=lambda key: (usable[key], key))
    return lr, usable[lr]


def conclusions(
    cells: Sequence[Cell], tasks: Sequence[str], gsnr: dict[str, dict[str, dict[str, float]]], seeds: int
) -> list[str]:
    """The conclusions, one plain sentence (or a few) per question, computed from the numbers."""
    lines: list[str] = []
    summaries = {(t, s.key): summarize(cells, t, s.key) for t in tasks for s in OPTIMIZERS}
    verdicts_best, verdicts_default = [], []
    for task in tasks:
        sai, adamw = summaries[(task, "sgd-sai")], summaries[(task, "adamw")]
        verdict, gap = _compare(sai.best, adamw.best)
        verdicts_best.append(verdict.split()[0])
        lines.append(
            f"- **{task}, each at its best lr:** SGD-SaI (sgd-sai) {verdict} AdamW: final validation loss "
            f"{_loss_of(sai.best)} against {_loss_of(adamw.best)}{_gap(gap)}."
        )
        verdict, gap = _compare(sai.default, adamw.default)
        verdicts_default.append(verdict.split()[0])
        lines.append(
            f"- **{task}, both at default settings (lr 1e-3):** SGD-SaI {verdict} AdamW: "
            f"{_loss_of(sai.default)} against {_loss_of(adamw.default)}{_gap(gap)}."
        )
    tally = {word: verdicts_best.count(word) for word in ("beats", "matches", "loses")}  # first words
    lines.append(
        f"- **Match or beat AdamW at its best lr (the paper's claim):** on {tally['beats'] + tally['matches']} of "
        f"{len(tasks)} tasks (beats on {tally['beats']}, matches within seed noise on {tally['matches']}, loses on "
        f"{tally['loses']})."
    )
    tally = {word: verdicts_default.count(word) for word in ("beats", "matches", "loses")}
    lines.append(
        f"- **At default settings:** SGD-SaI beats AdamW on {tally['beats']}, matches on {tally['matches']} and loses "
        f"on {tally['loses']} of {len(tasks)} tasks."
    )
    robust = []
    for task in tasks:
        sai, adamw = summaries[(task, "sgd-sai")], summaries[(task, "adamw")]
        robust.append(
            f"{task}: SGD-SaI {sai.near_best} near-best and {sai.diverged_lrs} diverged of {sai.grid_size}, "
            f"AdamW {adamw.near_best} near-best and {adamw.diverged_lrs} diverged"
        )
    wider = sum(summaries[(t, "sgd-sai")].near_best > summaries[(t, "adamw")].near_best for t in tasks)
    narrower = sum(summaries[(t, "sgd-sai")].near_best < summaries[(t, "adamw")].near_best for t in tasks)
    lines.append(
        f"- **Robustness to the lr (grid points half a decade apart; near-best: within {100 * NEAR_BEST:.0f}% of the "
        f"optimizer's own best mean final loss, no seed diverged):** {'; '.join(robust)}. SGD-SaI's near-best "
        f"range is wider than AdamW's on {wider}, narrower on {narrower} and equal on {len(tasks) - wider - narrower} "
        f"of {len(tasks)} tasks."
    )
    ratios = [
        summaries[(t, "sgd-sai")].state_bytes / summaries[(t, "adamw")].state_bytes
        for t in tasks
        if summaries[(t, "adamw")].state_bytes
    ]
    halved = all(r <= 0.51 for r in ratios)
    lines.append(
        f"- **Memory:** SGD-SaI's optimizer state is {min(ratios):.3f}x to {max(ratios):.3f}x AdamW's on these "
        f"models (measured on the state tensors and scalars each holds): "
        f"{'halved' if halved else 'not halved'}."
    )
    pairs = [
        (c, d)
        for c in cells
        for d in cells
        if c.task == d.task and c.optimizer == "sgd-sai" and d.optimizer == "paper" and d.on_grid and c.lr == d.lr
        if math.isfinite(c.stat("final_loss")[0] + d.stat("final_loss")[0])
    ]
    apart = [(c, d) for c, d in pairs if abs(d.stat("final_loss")[0] / c.stat("final_loss")[0] - 1) > SAME_RUN]
    if pairs:
        verdict = "held on every pair" if not apart else f"held on {len(pairs) - len(apart)} of {len(pairs)} pairs"
        line = (
            f"- **The presets' conversion (SPEC: paper at lr * M and weight decay / M is sgd-sai):** {verdict} "
            f"(mean final validation losses within {100 * SAME_RUN:g}% of each other, over the (task, lr) pairs "
            f"where both finished)"
        )
        if apart:
            listed = "; ".join(
                f"{c.task} at lr {_lr(c.lr)}: sgd-sai {_fmt(*c.stat('final_loss')[:2])}, paper "
                f"{_fmt(*d.stat('final_loss')[:2])}"
                for c, d in apart
            )
            line += f". Not within {100 * SAME_RUN:g}%: {listed} (the two presets compute lr * S in a different order in float32)"
        lines.append(line + ".")
    unconverted = []
    for task in tasks:
        literal = [c for c in cells if c.task == task and c.optimizer == "paper" and not c.on_grid]
        if literal:
            unconverted.append(f"{task} {_fmt(*literal[0].stat('final_loss')[:2])}")
    if unconverted:
        lines.append(
            "- **paper at its literal defaults (lr 1e-3, weight decay 1e-2, no conversion):** final validation loss "
            + ", ".join(unconverted)
            + " (compare the default-settings column of sgd-sai above)."
        )
    sgd_verdicts = []
    for task in tasks:
        verdict, gap = _compare(summaries[(task, "sgd-sai")].best, summaries[(task, "sgd")].best)
        sgd_verdicts.append(f"{task}: {verdict}{_gap(gap)}")
    lines.append(f"- **SGD-SaI against SGD with momentum 0.9, each at its best lr:** {'; '.join(sgd_verdicts)}.")
    parts = []
    for task in tasks:
        init, trained = gsnr[task]["init"], gsnr[task]["trained"]
        parts.append(
            f"{task}: R^2 {init['r2_line']:.4f} at initialization, {trained['r2_line']:.4f} after training "
            f"(G / sqrt(n - 1) {init['ratio_min']:.3f} to {init['ratio_max']:.3f}, then "
            f"{trained['ratio_min']:.3f} to {trained['ratio_max']:.3f})"
        )
    lines.append(
        "- **g-SNR and tensor size (share of the variance of log G explained by the line G = sqrt(n), no fitted "
        "parameter):** " + "; ".join(parts) + "."
    )
    edges = []
    for (task, key), summary in summaries.items():
        on_grid = sorted(c.lr for c in cells if c.task == task and c.optimizer == key and c.on_grid)
        if summary.best is not None and summary.best.lr in (on_grid[0], on_grid[-1]):
            edges.append(f"{_LABEL[key]} on {task} ({_lr(summary.best.lr)})")
    if edges:
        lines.append(
            "- **Best lr at the edge of its grid** (the optimum may lie beyond the grid, which was fixed before the "
            "runs and is not widened after looking): " + "; ".join(edges) + "."
        )
    else:
        lines.append("- Every optimizer's best lr lies inside its grid: the grids show each optimum.")
    lr, worst = recommend(cells, tasks, "sgd-sai")
    per_task = ", ".join(
        f"{t} {_lr(summaries[(t, 'sgd-sai')].best.lr)}" for t in tasks if summaries[(t, "sgd-sai")].best is not None
    )
    if lr is None:
        lines.append(
            f"- **Recommended starting lr for sgd-sai:** none of the grid's lrs is usable on every task (best per task: {per_task})."
        )
    else:
        lines.append(
            f"- **Recommended starting lr for sgd-sai (the grid lr with the smallest worst-case excess over every "
            f"task's best):** {_lr(lr)}, at most {100 * worst:.1f}% above the best on any task here (best per "
            f"task: {per_task})."
        )
    adamw_lr, adamw_worst = recommend(cells, tasks, "adamw")
    if adamw_lr is not None:
        lines.append(
            f"- For comparison, the same rule gives AdamW {_lr(adamw_lr)} ({100 * adamw_worst:.1f}% worst case)."
        )
    if seeds < 3:
        lines.append(f"- Only {seeds} seed(s) in this run: the seed-noise rule has no spread to work with.")
    return lines


def write_page(
    out: Path,
    runs: Sequence[RunResult],
    *,
    tasks: Sequence[str],
    titles: dict[str, str],
    describe: dict[str, dict[str, Any]],
    reports: dict[str, dict[str, GsnrReport]],
    offsets: Sequence[int],
    seeds: Sequence[int],
    environment: dict[str, Any],
    command: str,
) -> Path:
    """Writes ``paper-check.md``, ``paper_lr.png`` and ``paper_gsnr.png`` into ``out``; returns the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    cells = aggregate(runs)
    summaries = [summarize(cells, t, s.key) for t in tasks for s in OPTIMIZERS]
    gsnr = {t: {when: gsnr_summary(reports[t][when]) for when in ("init", "trained")} for t in tasks}
    _lr_chart(out / "paper_lr.png", cells, tasks, titles)
    _gsnr_chart(out / "paper_gsnr.png", reports, tasks)
    m_values = {
        t: sorted({r.max_gsnr for r in runs if r.task == t and r.optimizer == "paper" and r.max_gsnr}) for t in tasks
    }
    m_mismatch = max(
        (abs(r.lr_used / r.lr / r.max_gsnr - 1) for r in runs if r.optimizer == "paper" and r.on_grid and r.max_gsnr),
        default=math.nan,
    )
    env = environment
    page = [
        "# Paper check: SGD-SaI against AdamW and SGD, measured at CPU scale",
        "",
        f"Generated by `{command}` (`make paper-check`; `python -m sai_paper --help`). Do not edit by hand: every "
        "number and every sentence of the conclusions below comes from this run. Torch only: the JAX and Keras "
        "adapters follow the same contract (`docs/spec.md`) and are checked step for step against the same "
        "reference by the conformance suite, so their training curves would be these up to rounding.",
        "",
        "The paper (Xu et al., arXiv 2412.11768) claims that SGD-SaI matches or beats AdamW (GPT-2 small, ViT-S, "
        "ResNet-18), that it is robust to its hyperparameters, and that it halves optimizer memory. Here the same "
        "questions are asked of three models small enough to train on two CPU cores, with nothing downloaded.",
        "",
        "## Conclusions",
        "",
        *conclusions(cells, tasks, gsnr, len(seeds)),
        "",
        "## Main table",
        "",
        f"Per task and optimizer: the best grid lr (lowest mean final validation loss over {len(seeds)} seed(s), "
        "no seed diverged), its final validation loss and accuracy (mean ± sample sd over seeds), the "
        "default-settings run, how many grid lrs are near-best (within 5% of that best) and how many diverged, "
        "and the optimizer state measured after training.",
        "",
        *_main_table(summaries),
        "",
        "![final validation loss against learning rate, one panel per task](paper_lr.png)",
        "",
        "## Protocol",
        "",
        f"- Tasks ({len(tasks)}), all in torch, nothing downloaded:",
    ]
    for task in tasks:
        d = describe[task]
        page.append(f"  - `{task}`: {titles[task]}; {d['parameters']:,} parameters in {d['tensors']} tensors.")
    page += [
        f"- Seeds {', '.join(map(str, seeds))}: seed `s` sets the initial weights (`torch.manual_seed(s)`) and the "
        "order of the training batches; every optimizer and lr of one seed starts from the same weights and sees "
        "the same batches. The validation sets are fixed (the GPT: 128 held-out windows of 64 characters; the "
        "digits: 360 of the 1,797 images).",
        "- Learning-rate grids, fixed before any run, half a decade apart and centred on each optimizer's "
        "documented default learning rate (SGD: see its row):",
        "",
        *_grid_table(offsets),
        "",
        "- `paper`'s `M` per task and seed, as the optimizer froze it (`max_gsnr`): "
        + "; ".join(f"{t}: {', '.join(f'{m:.4g}' for m in m_values[t]) or '-'}" for t in tasks)
        + f". The conversion used `M` measured beforehand by `sai_torch.gsnr_report` on the same first batch; the "
        f"two differ by at most {m_mismatch:.2g} (relative).",
        "- No schedule, no warm-up, no gradient clipping: each optimizer's rule as shipped, the same for all.",
        "- A run *diverged* when a training loss was NaN or infinite (training stops there; its final loss is NaN) "
        "or its final validation loss is above its initial one (before any update). Final: after the last step; "
        "best: the lowest (loss) or highest (accuracy) over the evaluations.",
        "- The best lr is chosen on the validation set that also reports it, identically for every optimizer, so "
        "the best-lr numbers are slightly optimistic for all of them alike.",
        "- Two means *match* when their gap is within the seed noise `sqrt(sd_a^2 + sd_b^2)`.",
        "- Optimizer state: `sai_demo`'s `optimizer_state_bytes`, summed over the tensors (numel x element size) "
        "and Python floats (8 bytes) each optimizer holds after training.",
        "",
        "## Every run",
        "",
    ]
    for task in tasks:
        page += [f"### {task}: {titles[task]}", "", *_cell_table(cells, task), ""]
    page += [
        "## The g-SNR against tensor size",
        "",
        "`G = ||g|| / std(g)` per tensor, from `sai_torch.gsnr_report` (one gradient of a training batch), rendered "
        "by `sai_gsnr.plot_report`: at initialization (seed 0, first batch) and after training (the sgd-sai run at "
        "its default lr, seed 0, last batch). Since `||g||^2 = (n - 1) s^2 + n mean^2`, `G >= sqrt(n - 1)` always; "
        "R^2 says how much of the spread of `log G` over a model's tensors the line `G = sqrt(n)` explains alone.",
        "",
        "| task | when | tensors | R^2 of log G by log sqrt(n) (line G = sqrt(n)) | R^2, fitted line (slope) | G / sqrt(n - 1): min, median, max |",
        "|---|---|---|---|---|---|",
    ]
    for task in tasks:
        for when, label in (("init", "initialization"), ("trained", "after training")):
            s = gsnr[task][when]
            page.append(
                f"| {task} | {label} | {s['tensors']} | {s['r2_line']:.4f} | {s['r2_fit']:.4f} ({s['slope']:.3f}) | "
                f"{s['ratio_min']:.4f}, {s['ratio_median']:.4f}, {s['ratio_max']:.4f} |"
            )
    page += [
        "",
        "![G against sqrt(n) per tensor, at initialization and after training](paper_gsnr.png)",
        "",
        "## Memory",
        "",
        "| task | parameters | " + " | ".join(spec.label for spec in OPTIMIZERS) + " |",
        "|---|---|" + "---|" * len(OPTIMIZERS),
    ]
    for task in tasks:
        mine = [s for s in summaries if s.task == task]
        cells_text = [f"{_bytes(s.state_bytes)} ({s.state_bytes / s.param_bytes:.2f}x)" for s in mine]
        page.append(f"| {task} | {_bytes(mine[0].param_bytes)} | " + " | ".join(cells_text) + " |")
    page += [
        "",
        "## Runtime",
        "",
        f"- Wall time of this run: **{env['wall_s'] / 60:.1f} minutes** ({env['wall_s']:.0f} s, from start to "
        f"this page), {env['runs']} training runs in {env['workers']} worker process(es) with {env['threads']} "
        f"torch thread(s) each; training time summed over runs {env['train_s']:.0f} s.",
        f"- Machine: {env['cpus']} CPU cores, {env['platform']}, Python {env['python']}, torch {env['torch']}. "
        f"Load average (1 min) {env['load_start']:.2f} at the start and {env['load_end']:.2f} at the end: the "
        "machine is shared, so other jobs were running; timings are not comparable across runs.",
        "",
    ]
    path = out / "paper-check.md"
    path.write_text("\n".join(page))
    return path
