"""The one renderer of a :class:`sai_core.GsnrReport`: a text table, JSON, and a plot of G against sqrt(n).

Every adapter's report (torch, JAX, Keras; from a gradient or from a checkpoint) goes through
these three functions, so the CLI, the demo and a user's notebook print the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sai_core import GsnrReport

__all__ = ["format_report", "plot_report", "report_json"]

_COLUMNS = ("name", "shape", "n", "G", "sqrt(n)", "G/sqrt(n-1)", "S")


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _shape(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _title(report: GsnrReport) -> str:
    rule = "S = G / M" if report.config.normalize == "max" else "S = G"
    origin = "from one gradient" if report.source == "gradient" else "frozen in the optimizer state"
    return f"g-SNR per tensor ({report.framework}, {origin}); preset {report.config.preset}: {rule}"


def format_report(report: GsnrReport) -> str:
    """The report as an aligned text table, a title line above and ``M`` below.

    Examples:
        >>> import numpy as np
        >>> from sai_core import report_from_gradients, resolve_config
        >>> report = report_from_gradients(["w", "b"], [np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros(3)],
        ...                                eps=1e-8, config=resolve_config(), framework="numpy")
        >>> print(format_report(report))
        g-SNR per tensor (numpy, from one gradient); preset sgd-sai: S = G
        name  shape   n  G       sqrt(n)  G/sqrt(n-1)  S
        w     (2, 2)  4  4.2426  2        2.4495       4.2426
        b     (3,)    3  -       1.7321   -            -       all-zero gradient: waits
        M = 4.2426 (the largest G; only preset "paper" divides by it)
    """
    table = [list(_COLUMNS)]
    for row in report.rows:
        table.append(
            [
                row.name,
                _shape(row.shape),
                "?" if row.numel is None else str(row.numel),
                _number(row.gsnr, ".5g"),
                _number(row.sqrt_numel, ".5g"),
                _number(row.ratio, ".4f"),
                _number(row.scale, ".5g"),
                row.note,
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    lines = [_title(report)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths)]
        if len(line) > len(_COLUMNS) and line[-1]:
            cells.append(line[-1])
        lines.append("  ".join(cells).rstrip())
    used = "S = G / M" if report.config.normalize == "max" else 'only preset "paper" divides by it'
    lines.append(f"M = {_number(report.max_gsnr, '.5g')} (the largest G; {used})")
    return "\n".join(lines)


def report_json(report: GsnrReport) -> str:
    """The report as JSON (``GsnrReport.to_dict``), for machines."""
    return json.dumps(report.to_dict(), indent=1)


def plot_report(report: GsnrReport, path: str | Path | None = None, *, ax: Any = None, title: str | None = None) -> Any:
    """Plots ``G`` against ``sqrt(n)`` per tensor (log-log), with the line ``G = sqrt(n)``.

    Args:
        report: the report.
        path: where to write a PNG (``None``: write nothing, return the axes).
        ax: a matplotlib ``Axes`` to draw into (``None``: a new figure).
        title: the axes' title (default: the report's title line).

    Returns:
        The matplotlib ``Axes``.
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    if ax is None:
        figure, ax = plt.subplots(figsize=(5.5, 4.2), dpi=100)
    points = [(row.sqrt_numel, row.gsnr) for row in report.rows if row.gsnr is not None and row.sqrt_numel]
    if points:
        xs, ys = zip(*points)
        low, high = min(xs + ys) / 1.5, max(xs + ys) * 1.5
        ax.plot([low, high], [low, high], color="0.6", linestyle="--", linewidth=1, label="G = sqrt(n)")
        ax.scatter(xs, ys, s=18, color="C0", label="one tensor", zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("sqrt(n), n = elements of the tensor")
    ax.set_ylabel("G = ||g|| / std(g)")
    ax.set_title(title or _title(report), fontsize=8)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path)
        plt.close(ax.figure)
    return ax
