"""Results of a protocol grouped over seeds: rows of ``results.jsonl`` -> :class:`Cell` objects, gains.

Read by :mod:`vldistill.protocol.report` (tables, CSV), :mod:`vldistill.protocol.controls` and
:mod:`vldistill.protocol.plots`. Rows written before the controls existed (no ``control``, ``dev`` or
``best_step``) read as unshuffled rows without dev selection.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vldistill.errors import DataError
from vldistill.training.evaluate import PRIMARY_METRIC

_TASK_ORDER = tuple(PRIMARY_METRIC)
_STUDENT_ORDER = ("prior", "fusion", "dual")
_METHOD_ORDER = ("prior", "none", "kd", "clip_td", "mad", "dide")
PRIOR = "prior"
"""The method (and student) of the text-only prior's rows (vldistill.protocol.runner.rows_of)."""
BASELINE = "none"
_NUMBER = (int, float)
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "task": str,
    "condition": str,
    "method": str,
    "student": str,
    "seed": int,
    "metric": str,
    "value": _NUMBER,
    "split": str,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "label": str,
    "fraction": _NUMBER,
    "train_examples": int,
    "seconds": _NUMBER,
    "eval_ms_per_example": _NUMBER,
    "eval_deploy_ms_per_example": _NUMBER,
    "control": str,
    "dev": _NUMBER,
    "best_step": int,
}
Column = tuple[str, str, str]  # a table column: (student, method, label)
_FIX = "rerun the run (`vldistill protocol` continues where it stopped) or delete the line"


@dataclass(frozen=True)
class ResultRow:
    """One metric of one finished run on one split. ``label`` names the protocol's method entry (default:
    ``method``), so two entries of one method (an ablation) stay apart. ``value`` is in percent.
    ``control`` is ``"shuffled"`` for the image-shuffle control's splits, else None; ``dev`` is the run's
    primary metric on dev and ``best_step`` the step of the checkpoint selected on it (None: not recorded)."""

    task: str
    condition: str
    method: str
    student: str
    seed: int
    metric: str
    value: float
    split: str
    label: str
    fraction: float | None = None
    train_examples: int | None = None
    seconds: float | None = None
    eval_ms_per_example: float | None = None
    eval_deploy_ms_per_example: float | None = None
    control: str | None = None
    dev: float | None = None
    best_step: int | None = None


@dataclass(frozen=True)
class Cell:
    """The rows of one (task, condition, split, student, method entry, metric) over seeds.

    ``control`` as in :class:`ResultRow`; ``dev`` and ``best_step`` are means over the seeds that record them.
    """

    task: str
    condition: str
    split: str
    student: str
    method: str
    label: str
    metric: str
    values: tuple[float, ...]
    fraction: float | None
    eval_ms_per_example: float | None
    seconds: float | None
    train_examples: float | None
    control: str | None = None
    dev: float | None = None
    best_step: float | None = None
    eval_deploy_ms_per_example: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample std (ddof=1); NaN for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    @property
    def comparable(self) -> tuple[str, str, str, str, str]:
        """What a cell and its baseline share: task, condition, split, student, metric."""
        return self.task, self.condition, self.split, self.student, self.metric

    @property
    def column(self) -> Column:
        return self.student, self.method, self.label


def _checked(raw: Any, path: Path, where: str) -> ResultRow:
    if not isinstance(raw, dict):
        raise DataError(path, where, f"expected a JSON object, got {type(raw).__name__}", _FIX)
    for key, kind in (*_REQUIRED.items(), *_OPTIONAL.items()):
        if key not in raw or (key in _OPTIONAL and raw[key] is None):
            if key in _REQUIRED:
                raise DataError(path, where, f"missing field '{key}'", _FIX)
            continue
        value = raw[key]
        bad_number = isinstance(value, float) and not math.isfinite(value)
        if isinstance(value, bool) or not isinstance(value, kind) or bad_number:
            raise DataError(path, where, f"field '{key}' has the wrong type or value: {value!r}", _FIX)
    fields = {key: raw.get(key) for key in (*_REQUIRED, *_OPTIONAL)}
    fields["label"] = fields["label"] or raw["method"]
    return ResultRow(**fields)


def read_results(path: Path) -> list[ResultRow]:
    """The rows of ``results.jsonl`` (of a row repeated by a rerun, the last); bad input raises DataError."""
    if not path.is_file():
        raise DataError(path, None, "results file not found", "run `vldistill protocol CONFIG --out DIR` first")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(path, None, f"not UTF-8 text ({err.reason})", "rewrite the file as UTF-8") from None
    rows: dict[tuple, ResultRow] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"line {number}", f"malformed JSON ({err.msg})", _FIX) from None
        row = _checked(raw, path, f"line {number}")
        key = (row.task, row.condition, row.label, row.method, row.student, row.seed, row.metric, row.split)
        rows.pop(key, None)  # a rerun: the later line replaces it and takes its place in file order
        rows[key] = row
    if not rows:
        raise DataError(path, None, "no finished runs yet", "wait for the protocol's first run to finish")
    return list(rows.values())


def _rank(name: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(name), "") if name in order else (len(order), name)


def column_key(column: Column) -> tuple:
    """Sort key of a (student, method, label) column: fusion before dual, none first, then kd..dide."""
    student, method, label = column
    return _rank(student, _STUDENT_ORDER), _rank(method, _METHOD_ORDER), label


def condition_key(condition: str, split: str, fraction: float | None) -> tuple:
    """full, then low-shot by increasing fraction, then other conditions, then shift; eval split first."""
    if condition in ("full", "shift"):
        return (0 if condition == "full" else 3, 0.0, ""), split != "eval", split
    group = (1, fraction, condition) if fraction is not None else (2, 0.0, condition)
    return group, split != "eval", split


def _mean_of(values: Iterable[float | None]) -> float | None:
    return statistics.fmean(known) if (known := [v for v in values if v is not None]) else None


def aggregate(rows: Sequence[ResultRow]) -> list[Cell]:
    """Group rows over seeds into cells, sorted by task (vqa, snli_ve, vcr, nlvr2), condition, column."""
    groups: dict[tuple, list[ResultRow]] = {}
    for row in rows:
        key = (row.task, row.condition, row.split, row.student, row.method, row.label, row.metric)
        groups.setdefault(key, []).append(row)
    cells = [
        Cell(
            *key,
            values=tuple(r.value for r in group),
            fraction=group[0].fraction,
            eval_ms_per_example=_mean_of(r.eval_ms_per_example for r in group),
            seconds=_mean_of(r.seconds for r in group),
            train_examples=_mean_of(r.train_examples for r in group),
            control=group[0].control,
            dev=_mean_of(r.dev for r in group),
            best_step=_mean_of(r.best_step for r in group),
            eval_deploy_ms_per_example=_mean_of(r.eval_deploy_ms_per_example for r in group),
        )
        for key, group in groups.items()
    ]
    return sorted(
        cells,
        key=lambda c: (
            _rank(c.task, _TASK_ORDER),
            condition_key(c.condition, c.split, c.fraction),
            column_key(c.column),
            c.metric,
        ),
    )


def is_breakdown(metric: str) -> bool:
    """A per-group metric ``<primary>/<group>/<value>`` (e.g. ``vqa_accuracy/answer_type/yes/no``)."""
    return "/" in metric


def primary_metric(task: str, cells: Sequence[Cell]) -> str:
    """The task's headline metric (``PRIMARY_METRIC``), else (unknown task, metric absent) its first one."""
    metrics = [c.metric for c in cells if c.task == task]
    return PRIMARY_METRIC[task] if PRIMARY_METRIC.get(task) in metrics else metrics[0]


def _primary_cells(task: str, cells: Sequence[Cell]) -> tuple[str, list[Cell]]:
    """The task's primary metric and its cells, image-shuffle controls left out (those are in Controls)."""
    metric = primary_metric(task, cells)
    return metric, [c for c in cells if (c.task, c.metric) == (task, metric) and c.control is None]


def baseline_of(cell: Cell, cells: Sequence[Cell]) -> Cell | None:
    """The same student's ``none`` cell (label ``none`` preferred) under the cell's task, condition, split."""
    candidates = [c for c in cells if c.method == BASELINE and c.comparable == cell.comparable]
    candidates.sort(key=lambda c: c.label != BASELINE)
    return candidates[0] if candidates else None


def prior_of(cell: Cell, cells: Sequence[Cell]) -> Cell | None:
    """The text-only prior's cell (label ``prior`` preferred) under the cell's task, condition, split, metric."""
    where = cell.task, cell.condition, cell.split, cell.metric, cell.control
    candidates = [
        c for c in cells if c.method == PRIOR and (c.task, c.condition, c.split, c.metric, c.control) == where
    ]
    candidates.sort(key=lambda c: c.label != PRIOR)
    return candidates[0] if candidates else None


def gain(cell: Cell, cells: Sequence[Cell]) -> float | None:
    """Mean minus the baseline's mean; None for a baseline itself or when no baseline ran."""
    base = baseline_of(cell, cells)
    return None if base is None or base is cell else cell.mean - base.mean


def pooled_std(a: Cell, b: Cell) -> float:
    """sqrt(((n_a-1) s_a^2 + (n_b-1) s_b^2) / (n_a+n_b-2)); NaN when both cells have one seed."""
    dof = a.n + b.n - 2
    squares = sum((c.n - 1) * c.std**2 for c in (a, b) if c.n > 1)
    return math.sqrt(squares / dof) if dof else math.nan


MIN_EFFECT = 1.0
"""Points: the smallest difference the report calls an effect (issue 13's "max(1 point, the pooled std")."""


def threshold(spread: float) -> float:
    """max(``MIN_EFFECT``, ``spread``): the size a difference must exceed to count; NaN for an unknown spread."""
    return math.nan if math.isnan(spread) else max(MIN_EFFECT, spread)
