"""The report's PNG plots: low-shot curves, in-domain vs shifted bars, DiDE accuracy against cost.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): no global figure state, no display
needed. Each function takes one task's cells of its primary metric, writes the PNG and returns True, or
returns False (writing nothing) when the results hold nothing to plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from vldistill.report_cells import Cell

_DIDE_MODELS = {
    ("fusion", "none"): "fusion teacher",
    ("dual", "none"): "dual encoder",
    ("dual", "dide"): "DiDE dual",
}


def _name(cell: Cell) -> str:
    student, _, label = cell.column
    return f"{student} / {label}"


def _err(cell: Cell) -> float:
    return 0.0 if math.isnan(cell.std) else cell.std


def _fraction(cell: Cell) -> float:
    """The share of the training set: 1.0 for ``full``, else the condition's fraction."""
    return 1.0 if cell.condition == "full" or cell.fraction is None else cell.fraction


def _save(fig: Figure, path: Path) -> bool:
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
    return True


def _columns(cells: Sequence[Cell]) -> list[tuple[str, str, str]]:
    return list(dict.fromkeys(c.column for c in cells))


def plot_lowshot(task: str, metric: str, cells: Sequence[Cell], path: Path) -> bool:
    """Metric against training fraction (``full`` at 1.0), one line per column, error bars = std.

    Needs at least two fractions (``full`` and one low-shot condition with a known fraction).
    """
    curve = [
        c
        for c in cells
        if c.split == "eval" and (c.condition == "full" or (c.condition != "shift" and c.fraction is not None))
    ]
    fractions = sorted({_fraction(c) for c in curve})
    if len(fractions) < 2:
        return False
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for column in _columns(curve):
        line = sorted((c for c in curve if c.column == column), key=_fraction)
        ax.errorbar(
            [_fraction(c) for c in line],
            [c.mean for c in line],
            yerr=[_err(c) for c in line],
            marker="o",
            capsize=3,
            label=_name(line[0]),
        )
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.minorticks_off()
    ax.set(xlabel="fraction of the training set", ylabel=metric, title=f"{task}: low-shot")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_shift(task: str, metric: str, cells: Sequence[Cell], path: Path) -> bool:
    """Grouped bars per column tested shifted: in-domain (``full``, split eval) beside shifted (``shift``)."""
    in_domain = {c.column: c for c in cells if c.condition == "full" and c.split == "eval"}
    shifted = {c.column: c for c in cells if c.condition == "shift" and c.split != "eval"}
    if not shifted:
        return False
    columns = [col for col in _columns(cells) if col in shifted]
    fig = Figure(figsize=(max(6.4, 1.1 * len(columns) + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.38
    for offset, group, label in ((-width / 2, in_domain, "in-domain"), (width / 2, shifted, "shifted")):
        xs = [i + offset for i, col in enumerate(columns) if col in group]
        bars = [group[col] for col in columns if col in group]
        ax.bar(xs, [c.mean for c in bars], width, yerr=[_err(c) for c in bars], capsize=3, label=label)
    ax.set_xticks(range(len(columns)), [f"{s} / {lab}" for s, _, lab in columns], rotation=30, ha="right")
    ax.set(ylabel=metric, title=f"{task}: in-domain vs shifted test")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def dide_cells(cells: Sequence[Cell]) -> list[Cell]:
    """The full-condition, in-domain cells of the fusion teacher, the plain dual encoder and DiDE."""
    return [c for c in cells if c.condition == "full" and c.split == "eval" and (c.student, c.method) in _DIDE_MODELS]


def plot_dide(task: str, metric: str, cells: Sequence[Cell], path: Path) -> bool:
    """Metric against eval ms per example for the fusion teacher, the dual encoder and DiDE (full, eval).

    Written only when a dual-encoder cell with a measured speed exists.
    """
    points = [c for c in dide_cells(cells) if c.eval_ms_per_example is not None]
    if not any(c.student == "dual" for c in points):
        return False
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for c in points:
        ax.errorbar(
            [c.eval_ms_per_example],
            [c.mean],
            yerr=[_err(c)],
            marker="o",
            capsize=3,
            linestyle="none",
            label=f"{_DIDE_MODELS[c.student, c.method]} ({_name(c)})",
        )
    ax.set(xlabel="eval ms per example", ylabel=metric, title=f"{task}: accuracy vs inference cost (full)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
