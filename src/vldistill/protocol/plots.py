"""The report's PNG plots: low-shot curves, in-domain vs shifted bars, DiDE accuracy against cost.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): no global figure state, no display
needed. ``figure_<kind>`` builds one task's figure from the cells of its primary metric, or returns None
when the results hold nothing to plot; ``plot_<kind>`` writes it as PNG and returns its caption.

Every point is a mean over seeds with a ±1 sample-std error bar (no bar for one seed). Every metric in
``results.jsonl`` is a percentage (vldistill.training.evaluate, vldistill.metrics), so bars are clipped to
``METRIC_RANGE``: accuracy cannot exceed 100 however wide the spread. Points of different columns at the
same x (every column at each low-shot fraction; the two dual encoders at one inference cost) are dodged
sideways (seaborn's ``dodge``) so that none hides another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from vldistill.protocol.cells import Cell

METRIC_RANGE = (0.0, 100.0)
"""The range of every reported metric (percent); error bars never leave it."""

_DIDE_MODELS = {
    ("fusion", "none"): "fusion teacher",
    ("dual", "none"): "dual encoder",
    ("dual", "dide"): "DiDE dual",
}


def _column_name(column: tuple[str, str, str]) -> str:
    """``"fusion / kd"``; the text-only prior by that name."""
    student, method, label = column
    if method == "prior":
        return "text-only prior" if label == "prior" else f"text-only prior ({label})"
    return f"{student} / {label}"


def _name(cell: Cell) -> str:
    return _column_name(cell.column)


def error_bars(cells: Sequence[Cell], bounds: tuple[float, float] = METRIC_RANGE) -> list[list[float]]:
    """matplotlib's asymmetric ``yerr`` ``[below, above]``: mean ± std cut at ``bounds``; 0 for one seed.

    >>> from types import SimpleNamespace as C
    >>> error_bars([C(mean=98.0, std=3.0), C(mean=1.0, std=2.5), C(mean=50.0, std=math.nan)])
    [[3.0, 1.0, 0.0], [2.0, 2.5, 0.0]]
    """
    low, high = bounds
    below, above = [], []
    for cell in cells:
        std = 0.0 if math.isnan(cell.std) else cell.std
        below.append(max(0.0, cell.mean - max(low, cell.mean - std)))
        above.append(max(0.0, min(high, cell.mean + std) - cell.mean))
    return [below, above]


def dodge(xs: Sequence[float], width: float, *, log: bool = False) -> list[float]:
    """``xs`` with points closer than ``width`` spread ``width`` apart around their group's centre.

    Groups are runs of sorted x closer than ``width`` to the previous one; within a group, input order
    is left to right. With ``log``, distances are in decades (for a log axis).

    >>> dodge([1.0, 1.0, 5.0, 1.0], 0.5)
    [0.5, 1.0, 5.0, 1.5]
    """
    values = [math.log10(x) for x in xs] if log else list(xs)
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and values[i] - values[groups[-1][-1]] < width:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = list(values)
    for group in groups:
        members = sorted(group)
        centre = sum(values[i] for i in members) / len(members)
        for rank, i in enumerate(members):
            out[i] = centre + (rank - (len(members) - 1) / 2) * width
    return [10**x for x in out] if log else out


def seeds_caption(cells: Sequence[Cell], bounds: tuple[float, float] = METRIC_RANGE) -> str:
    """``"Values: mean ± std over 3 seeds; error bars clipped to 0–100."`` (points or bars) (a range when n differs)."""
    ns = sorted({c.n for c in cells})
    seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    plural = "" if ns == [1] else "s"
    note = " (one seed: no error bar)" if ns == [1] else (" (n per point: see the table)" if len(ns) > 1 else "")
    clipped = f"error bars clipped to {bounds[0]:g}–{bounds[1]:g}"
    return f"Values: mean ± std over {seeds} seed{plural}{note}; {clipped}."


def _fraction(cell: Cell) -> float:
    """The share of the training set: 1.0 for ``full``, else the condition's fraction."""
    return 1.0 if cell.condition == "full" or cell.fraction is None else cell.fraction


def _figure(width: float = 6.4) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, 4.6))
    return fig, fig.add_subplot()


def _finish(fig: Figure, caption: str) -> Figure:
    """Lay out ``fig`` with ``caption`` below the axes, as its last text (read back by ``_save``)."""
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize="small")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def _save(fig: Figure | None, path: Path) -> str | None:
    if fig is None:
        return None
    FigureCanvasAgg(fig).print_png(str(path))
    return fig.texts[-1].get_text()


def _columns(cells: Sequence[Cell]) -> list[tuple[str, str, str]]:
    return list(dict.fromkeys(c.column for c in cells))


def figure_lowshot(task: str, metric: str, cells: Sequence[Cell]) -> Figure | None:
    """Metric against training fraction (``full`` at 1.0, log axis), one line per column.

    Needs at least two fractions (``full`` and one low-shot condition with a known fraction).
    """
    curve = [
        c
        for c in cells
        if c.split == "eval" and (c.condition == "full" or (c.condition != "shift" and c.fraction is not None))
    ]
    fractions = sorted({_fraction(c) for c in curve})
    if len(fractions) < 2:
        return None
    columns = _columns(curve)
    closest = min(math.log10(b / a) for a, b in pairwise(fractions))
    width = 0.5 * closest / len(columns)  # all columns at one fraction span half the closest gap
    fig, ax = _figure()
    for rank, column in enumerate(columns):
        line = sorted((c for c in curve if c.column == column), key=_fraction)
        offset = (rank - (len(columns) - 1) / 2) * width
        ax.errorbar(
            [_fraction(c) * 10**offset for c in line],
            [c.mean for c in line],
            yerr=error_bars(line),
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
    return _finish(fig, seeds_caption(curve))


def figure_shift(task: str, metric: str, cells: Sequence[Cell]) -> Figure | None:
    """Grouped bars per column tested shifted: in-domain (``full``, split eval) beside shifted (``shift``)."""
    in_domain = {c.column: c for c in cells if c.condition == "full" and c.split == "eval"}
    shifted = {c.column: c for c in cells if c.condition == "shift" and c.split != "eval"}
    if not shifted:
        return None
    columns = [col for col in _columns(cells) if col in shifted]
    fig, ax = _figure(max(6.4, 1.1 * len(columns) + 2))
    width = 0.38
    shown = []
    for offset, group, label in ((-width / 2, in_domain, "in-domain"), (width / 2, shifted, "shifted")):
        xs = [i + offset for i, col in enumerate(columns) if col in group]
        bars = [group[col] for col in columns if col in group]
        ax.bar(xs, [c.mean for c in bars], width, yerr=error_bars(bars), capsize=3, label=label)
        shown += bars
    ax.set_xticks(range(len(columns)), [_column_name(col) for col in columns], rotation=30, ha="right")
    ax.set(ylabel=metric, title=f"{task}: in-domain vs shifted test")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _finish(fig, seeds_caption(shown))


def dide_cells(cells: Sequence[Cell]) -> list[Cell]:
    """The full-condition, in-domain cells of the fusion teacher, the plain dual encoder and DiDE."""
    return [c for c in cells if c.condition == "full" and c.split == "eval" and (c.student, c.method) in _DIDE_MODELS]


def figure_dide(task: str, metric: str, cells: Sequence[Cell]) -> Figure | None:
    """Metric against eval ms per example for the fusion teacher, the dual encoder and DiDE (full, eval).

    Only when a dual-encoder cell with a measured speed exists. The plain and the distilled dual encoder
    share an architecture, so their costs nearly coincide: points within 3% of the widest cost are dodged.
    """
    points = [c for c in dide_cells(cells) if c.eval_ms_per_example is not None]
    if not any(c.student == "dual" for c in points):
        return None
    costs = [c.eval_ms_per_example or 0.0 for c in points]
    xs = dodge(costs, 0.03 * max(costs))
    fig, ax = _figure()
    for x, c in zip(xs, points, strict=True):
        ax.errorbar(
            [x],
            [c.mean],
            yerr=error_bars([c]),
            marker="o",
            capsize=3,
            linestyle="none",
            label=f"{_DIDE_MODELS[c.student, c.method]} ({_name(c)})",
        )
    ax.set(xlabel="eval ms per example", ylabel=metric, title=f"{task}: accuracy vs inference cost (full)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _finish(fig, seeds_caption(points))


def plot_lowshot(task: str, metric: str, cells: Sequence[Cell], path: Path) -> str | None:
    """Write :func:`figure_lowshot` to ``path``; its caption, or None (nothing written) if no figure."""
    return _save(figure_lowshot(task, metric, cells), path)


def plot_shift(task: str, metric: str, cells: Sequence[Cell], path: Path) -> str | None:
    """Write :func:`figure_shift` to ``path``; its caption, or None (nothing written) if no figure."""
    return _save(figure_shift(task, metric, cells), path)


def plot_dide(task: str, metric: str, cells: Sequence[Cell], path: Path) -> str | None:
    """Write :func:`figure_dide` to ``path``; its caption, or None (nothing written) if no figure."""
    return _save(figure_dide(task, metric, cells), path)
