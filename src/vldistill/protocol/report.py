"""``vldistill report DIR``: tables, a CSV and plots from a protocol's ``DIR/results.jsonl``.

Rows (one metric of one finished run on one split, see :func:`vldistill.protocol.runner.rows_of`) are grouped over
seeds into :class:`Cell` objects; a *gain* is a cell's mean minus that of the same student's ``none``
baseline. Each task's section has its main table (the text-only prior a column of it), the gains, the
controls (:mod:`vldistill.protocol.controls`: margin over the text-only prior, the image-shuffle control,
per-group tables, model selection on dev) and the plots; the report ends with what did not appear and
what did (a gain counts when larger than max(1 point, the pooled std over seeds)).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vldistill.errors import DataError
from vldistill.protocol.cells import (
    BASELINE,
    PRIOR,
    Cell,
    Column,
    ResultRow,
    _primary_cells,
    aggregate,
    column_key,
    condition_key,
    gain,
    is_breakdown,
    read_results,
)
from vldistill.protocol.controls import (
    breakdown_tables,
    comparisons,
    header,
    image_use_lines,
    markdown_table,
    prior_section,
    row_label,
    selection_line,
    verdict_sections,
)
from vldistill.protocol.plots import dide_cells, plot_dide, plot_lowshot, plot_shift


def _number(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec`` (e.g. ``".2f"``, ``"+.2f"``); empty for None."""
    return "" if value is None else format(value, spec)


def format_cell(cell: Cell) -> str:
    """``"42.00 ± 2.00 (3)"``; ``"42.00 ± – (1)"`` for one seed."""
    std = "–" if cell.n < 2 else f"{cell.std:.2f}"
    return f"{cell.mean:.2f} ± {std} ({cell.n})"


def _row_label(cell: Cell) -> str:
    return row_label(cell.condition, cell.split)


def _pivot(cells: Sequence[Cell], columns: Sequence[Column], render: Callable[[Cell], str]) -> str:
    """A markdown table: rows = (condition, split) in the cells' order, the given columns, cells rendered."""
    at = {((c.condition, c.split), c.column): c for c in cells}
    body = []
    for row in dict.fromkeys((c.condition, c.split) for c in cells):
        first = next(c for c in cells if (c.condition, c.split) == row)
        body.append([_row_label(first), *(render(at[row, c]) if (row, c) in at else "" for c in columns)])
    return markdown_table(["condition", *map(header, columns)], body)


def main_table(cells: Sequence[Cell]) -> str:
    """Rows = conditions, columns = (student, method), "mean ± std (n)", the best mean of a row in bold."""
    best: dict[tuple[str, str], float] = {}
    for c in cells:
        best[c.condition, c.split] = max(best.get((c.condition, c.split), -math.inf), round(c.mean, 2))

    def render(cell: Cell) -> str:
        bold = round(cell.mean, 2) == best[cell.condition, cell.split]
        return f"**{format_cell(cell)}**" if bold else format_cell(cell)

    return _pivot(cells, sorted({c.column for c in cells}, key=column_key), render)


def gain_table(cells: Sequence[Cell]) -> str | None:
    """The gain of every distilled column over its student's ``none`` baseline ("+x.xx"); None if none.

    The text-only prior is a control, not a distilled student: it has no column here.
    """
    columns = [col for col in sorted({c.column for c in cells}, key=column_key) if col[1] not in (BASELINE, PRIOR)]
    return _pivot(cells, columns, lambda cell: _number(gain(cell, cells), "+.2f")) if columns else None


def secondary_table(cells: Sequence[Cell], primary: str) -> str:
    """Non-primary metrics and cost (training examples, seconds, eval ms per example) per row and column.

    Per-group breakdowns and the image-shuffle control have their own tables (Controls).
    """
    cells = [c for c in cells if c.control is None and not is_breakdown(c.metric)]
    keys = list(dict.fromkeys((c.condition, c.split, c.column) for c in cells))
    metrics = list(dict.fromkeys(c.metric for c in cells if c.metric != primary))
    at = {(c.condition, c.split, c.column, c.metric): c for c in cells}
    body = []
    for key in keys:
        some = next(c for c in cells if (c.condition, c.split, c.column) == key)
        line = [_row_label(some), header(key[2])]
        line += [format_cell(at[(*key, m)]) if (*key, m) in at else "" for m in metrics]
        body.append(
            [
                *line,
                _number(some.train_examples, ".0f"),
                _number(some.seconds, ".1f"),
                _number(some.eval_ms_per_example, ".2f"),
            ]
        )
    head = ["condition", "student / method", *metrics, "train examples", "train s", "eval ms/example"]
    return markdown_table(head, body)


def dide_table(cells: Sequence[Cell]) -> str | None:
    """Full-condition accuracy and speed of the fusion teacher, the plain dual encoder and DiDE.

    The speed is per question with the dual encoders' images encoded ahead (``deploy_ms_per_example``,
    as DiDE is deployed: an image's encoding serves every question on it), next to the whole prediction.
    """
    picked = dide_cells(cells)
    if not any(c.student == "dual" for c in picked):
        return None

    def deploy(c: Cell) -> float | None:
        return c.eval_deploy_ms_per_example if c.eval_deploy_ms_per_example is not None else c.eval_ms_per_example

    teacher_ms = next((deploy(c) for c in picked if c.student == "fusion"), None)
    body = [
        [
            header(c.column),
            format_cell(c),
            _number(c.eval_ms_per_example, ".2f"),
            _number(deploy(c), ".2f"),
            f"{teacher_ms / ms:.2f}x" if teacher_ms and (ms := deploy(c)) else "",
        ]
        for c in picked
    ]
    head = ["model", picked[0].metric, "ms/question", "ms/question, images encoded ahead", "speed-up vs fusion"]
    return markdown_table(head, body)


def _task_section(task: str, cells: Sequence[Cell], rows: Sequence[ResultRow], run_dir: Path) -> list[str]:
    own = [c for c in cells if c.task == task]
    metric, main = _primary_cells(task, own)
    out = [f"## {task}: {metric}", "", main_table(main), "", selection_line(own, task, metric), ""]
    gains = gain_table(main)
    if gains:
        out += [f"Gain over the same student's `none` baseline ({metric}, points):", "", gains, ""]
    dide = dide_table(main)
    if dide:
        out += ["DiDE: fusion teacher, plain dual encoder, distilled dual encoder (full):", "", dide, ""]
    for kind, plot in (("lowshot", plot_lowshot), ("shift", plot_shift), ("dide", plot_dide)):
        caption = plot(task, metric, main, run_dir / f"{task}_{kind}.png")
        if caption:
            out += [f"![{task}: {kind}]({task}_{kind}.png)", "", f"*{caption}*", ""]
        else:  # nothing to plot now: drop the figure an earlier report may have left
            (run_dir / f"{task}_{kind}.png").unlink(missing_ok=True)
    out += ["Other metrics and cost:", "", secondary_table(own, metric), ""]
    out += [f"### {task}: controls", "", *prior_section(main), *image_use_lines(rows, task, metric)]
    groups = breakdown_tables(own, task, metric, format_cell)
    if groups:
        out += [f"### {task}: per group", "", *groups]
    return out


def setting_rows(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of a settings tree, whole: nothing is cut short.

    Mappings nest with ``.``, lists that hold mappings or lists with ``[i]``; other lists, scalars and
    empty containers are leaves.

    >>> list(setting_rows({"base": {"train": {"lr": 0.001}}, "tasks": ["vqa"], "conditions": [{"name": "full"}]}))
    [('base.train.lr', 0.001), ('tasks', ['vqa']), ('conditions[0].name', 'full')]
    """
    if isinstance(value, dict) and value:
        for name, child in value.items():
            yield from setting_rows(child, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list) and any(isinstance(child, dict | list) for child in value):
        for index, child in enumerate(value):
            yield from setting_rows(child, f"{key}[{index}]")
    else:
        yield key, value


def _protocol_lines(run_dir: Path) -> list[str]:
    """The protocol's settings (``protocol.json``), one table row per leaf setting, values whole."""
    path = run_dir / "protocol.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as err:
        raise DataError(path, None, f"malformed JSON ({err.msg})", "delete it; the report does not need it") from None
    if not isinstance(spec, dict) or not spec:
        return []
    body = [
        [f"`{key}`".replace("|", "\\|"), json.dumps(value, ensure_ascii=False).replace("|", "\\|")]
        for key, value in setting_rows(spec)
    ]
    return ["Protocol settings (`protocol.json`):", "", markdown_table(["setting", "value"], body), ""]


def _teacher_lines(run_dir: Path) -> list[str]:
    """What the demo's CLIP teacher knows (``teachers.json``, written by ``vldistill demo``): caption
    retrieval on held-out pairs, zero-shot VQA and word-to-region grounding (``vldistill.demo.grounding``)."""
    path = run_dir / "teachers.json"
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        stats = saved.get("demo_clip") or {}
        stats = stats.get("stats", stats)  # demo_clip.json: {"settings": ..., "stats": ...}
        student = (saved.get("demo_student") or {}).get("stats") or {}
    except (json.JSONDecodeError, AttributeError):
        raise DataError(path, None, "malformed JSON", "delete it; `vldistill demo` writes it again") from None
    if not stats:
        return []

    def pct(value: Any) -> str:
        return "–" if value is None else f"{100 * float(value):.1f}"

    lines = [
        "## The demo's CLIP teacher",
        "",
        f"Pre-trained on {stats.get('train_pairs', '?')} caption pairs of both styles "
        f"in {stats.get('seconds', '?')} s. "
        f"Caption retrieval on {stats.get('held_out_pairs', '?')} held-out pairs: top-1 "
        f"{pct(stats.get('retrieval_top1'))}% (chance {pct(stats.get('retrieval_chance'))}%).",
        "",
    ]
    grounding = stats.get("grounding") or {}
    zero_shot = stats.get("zero_shot_vqa") or {}
    if grounding or zero_shot:
        body = []
        for style in dict.fromkeys([*zero_shot, *grounding]):
            z, g = zero_shot.get(style) or {}, grounding.get(style) or {}
            body.append(
                [
                    style,
                    f"{pct(z.get('accuracy'))} (chance {pct(z.get('chance'))})",
                    pct(g.get("shape_word")),
                    pct(g.get("colour_word")),
                    pct(g.get("chance")),
                ]
            )
        lines += [
            "Zero-shot accuracy (%) on the world's VQA (answers ranked by caption prompts) and word-to-region "
            'grounding on "where is the <colour> <shape>?" questions: % whose word\'s patch relevance peaks in the '
            "answer's quadrant.",
            "",
            markdown_table(["style", "zero-shot VQA", "shape word grounded", "colour word grounded", "chance"], body),
            "",
        ]
    if student:
        lines += [
            "## The demo's pre-trained student",
            "",
            f"Every fusion run starts from the student pre-trained with image-text matching on "
            f"{student.get('train_pairs', '?')} caption pairs of the {'/'.join(student.get('styles', []))} style "
            f"in {student.get('seconds', '?')} s (`vldistill.demo.student`): held-out matching accuracy "
            f"{pct(student.get('itm_accuracy_held_out'))}% (before pre-training "
            f"{pct(student.get('itm_accuracy_before'))}%, chance 50%; half of the negatives swap a colour or "
            "shape word). The dual encoders start from scratch.",
            "",
        ]
    return lines


def _overview(rows: Sequence[ResultRow], cells: Sequence[Cell], run_dir: Path) -> list[str]:
    def listed(values: Iterable[Any]) -> str:
        return ", ".join(str(v) for v in dict.fromkeys(values))

    # the shifted test of a full run is reported as condition "shift": count it as that run
    runs = {(r.task, "full" if r.condition == "shift" else r.condition, r.student, r.label, r.seed) for r in rows}
    columns = sorted({c.column for c in cells}, key=column_key)
    by_condition = sorted(cells, key=lambda c: condition_key(c.condition, "eval", c.fraction))
    return [
        "# vldistill report",
        "",
        f"- tasks: {listed(c.task for c in cells)}",
        f"- conditions: {listed(c.condition for c in by_condition)}",
        f"- students / methods: {listed(header(c) for c in columns)}",
        f"- seeds: {listed(sorted({r.seed for r in rows}))}",
        f"- finished runs: {len(runs)} ({len(rows)} result rows)",
        "",
        f"Regenerate with `vldistill report {run_dir}`.",
        "",
        "Cells are mean ± sample std (number of seeds) of the task's primary metric; the best mean of a row "
        "is in bold. The `shift` row is the test in the other domain of the `full` runs.",
        "",
    ]


CSV_COLUMNS = "task condition split student method label metric mean std n gain control dev best_step".split()


def write_summary_csv(cells: Sequence[Cell], path: Path) -> None:
    """One row per cell: task, condition, split, student, method, label, metric, mean, std, n, gain, control
    (``shuffled`` for the image-shuffle control), dev (mean dev score) and best_step (mean selected step)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            "task condition split student method label metric mean std n gain control dev best_step".split()
        )
        for c in cells:
            writer.writerow(
                [
                    c.task,
                    c.condition,
                    c.split,
                    c.student,
                    c.method,
                    c.label,
                    c.metric,
                    f"{c.mean:.4f}",
                    "" if c.n < 2 else f"{c.std:.4f}",
                    c.n,
                    _number(gain(c, cells), ".4f"),
                    c.control or "",
                    _number(c.dev, ".4f"),
                    _number(c.best_step, ".1f"),
                ]
            )


def write_report(run_dir: Path) -> Path:
    """Write ``report.md``, ``summary.csv`` and the PNG plots into ``run_dir``; returns report.md's path."""
    rows = read_results(run_dir / "results.jsonl")
    cells = aggregate(rows)
    lines = _overview(rows, cells, run_dir) + _protocol_lines(run_dir)
    for task in dict.fromkeys(c.task for c in cells):
        lines += _task_section(task, cells, rows, run_dir)
    lines += _teacher_lines(run_dir)
    primary = [c for task in dict.fromkeys(c.task for c in cells) for c in _primary_cells(task, cells)[1]]
    lines += verdict_sections(comparisons(primary))
    write_summary_csv(cells, run_dir / "summary.csv")
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def summary_table(run_dir: Path) -> str:
    """The main results of every task as markdown (one titled table per task), for a terminal."""
    cells = aggregate(read_results(run_dir / "results.jsonl"))
    parts = [(task, *_primary_cells(task, cells)) for task in dict.fromkeys(c.task for c in cells)]
    return "\n\n".join(f"{task} ({metric})\n\n{main_table(main)}" for task, metric, main in parts)
