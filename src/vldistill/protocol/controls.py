"""The report's controls and verdicts, in plain words a reader can check against the tables.

- the **text-only prior** (``vldistill.models.prior``): what the question alone gives, and each
  student's margin over it;
- the **image-shuffle control**: each run scored again with every example given another evaluation
  example's image; "uses the image: +X points" is the score minus the shuffled score, per seed, then
  mean ± std over seeds (a paired difference: the seed's own run on both sides);
- the per-group breakdowns the official tools report (VQA per answer / question type, per class);
- model selection on dev (the mean step of the selected checkpoints);
- every comparison the protocol makes (each method against the same student's ``none`` baseline per
  condition; ``dide`` against the plain dual encoder) judged against ``max(1 point, pooled std)``: what
  did not appear, and what did, with its size relative to that threshold (issue 13).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vldistill.protocol.cells import (
    BASELINE,
    MIN_EFFECT,
    PRIOR,
    Cell,
    Column,
    ResultRow,
    baseline_of,
    column_key,
    condition_key,
    is_breakdown,
    pooled_std,
    prior_of,
    threshold,
)

SHUFFLED = "shuffled"


def header(column: Column) -> str:
    """A column's name in tables and sentences: ``"fusion / kd"``, ``"dual / dual (none)"``, ``"text-only prior"``."""
    student, method, label = column
    if method == PRIOR:
        return "text-only prior" if label == PRIOR else f"text-only prior ({label})"
    return f"{student} / {label}" if label == method else f"{student} / {label} ({method})"


def row_label(condition: str, split: str) -> str:
    """``"full"``, ``"shift"``; ``"full (eval2)"`` when the split is not the condition's own."""
    natural = "shifted" if condition == "shift" else "eval"
    return condition if split.partition(":")[0] == natural else f"{condition} ({split})"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join("| " + " | ".join(row) + " |" for row in [head, ["---"] * len(head), *rows])


def _cell_text(cell: Cell) -> str:
    std = "–" if cell.n < 2 else f"{cell.std:.2f}"
    return f"{cell.mean:.2f} ± {std} ({cell.n})"


def _threshold_words(spread: float) -> str:
    return f"the threshold {threshold(spread):.2f} (the larger of {MIN_EFFECT:g} point and the pooled std {spread:.2f})"


def _columns(cells: Sequence[Cell]) -> list[Column]:
    return sorted({c.column for c in cells}, key=column_key)


def _rows(cells: Sequence[Cell]) -> list[tuple[str, str]]:
    return sorted({(c.condition, c.split) for c in cells}, key=lambda r: condition_key(r[0], r[1], _fraction(r, cells)))


def _fraction(row: tuple[str, str], cells: Sequence[Cell]) -> float | None:
    return next((c.fraction for c in cells if (c.condition, c.split) == row), None)


def prior_section(main: Sequence[Cell]) -> list[str]:
    """Markdown lines: the prior per condition and each column's margin over it; plain lines for the
    ``none`` baselines and for every column whose margin is not larger than max(1 point, pooled std)."""
    if not any(c.method == PRIOR for c in main):
        return [
            "No text-only prior in these results: add a method entry with `student: {kind: prior}` to the "
            "protocol to see what the question alone gives.",
            "",
        ]
    columns = [col for col in _columns(main) if col[1] != PRIOR]
    at = {(c.condition, c.split, c.column): c for c in main}
    body, lines = [], []
    for condition, split in _rows(main):
        prior = prior_of(next(c for c in main if (c.condition, c.split) == (condition, split)), main)
        line = [row_label(condition, split), _cell_text(prior) if prior else ""]
        for column in columns:
            cell = at.get((condition, split, column))
            line.append(f"{cell.mean - prior.mean:+.2f}" if cell and prior else "")
            if cell and prior:
                lines += _prior_sentence(cell, prior)
        body.append(line)
    table = markdown_table(["condition", "text-only prior", *map(header, columns)], body)
    intro = (
        "Text-only prior (a model that reads the question or hypothesis but no image, trained on the same "
        "subset as the students): its score, and each column's mean minus the prior's, in points."
    )
    return [intro, "", table, "", *[f"- {line}" for line in lines], ""]


def _prior_sentence(cell: Cell, prior: Cell) -> list[str]:
    delta, spread = cell.mean - prior.mean, pooled_std(cell, prior)
    where = f"{row_label(cell.condition, cell.split)}, {header(cell.column)}"
    versus = f"({cell.mean:.2f} vs {prior.mean:.2f})"
    if math.isnan(spread):  # one seed each: only the 1-point floor can be checked
        limit, words = MIN_EFFECT, f"{MIN_EFFECT:g} point (one seed each)"
    else:
        limit, words = threshold(spread), _threshold_words(spread)
    if delta <= limit:
        return [
            f"{where}: {delta:+.2f} points over the text-only prior {versus}, not larger than {words}: "
            "no better than the text alone."
        ]
    return [f"{where}: {delta:+.2f} points over the text-only prior {versus}."] if cell.method == BASELINE else []


def image_use_lines(rows: Sequence[ResultRow], task: str, metric: str) -> list[str]:
    """Markdown lines: per run family (condition, column) "uses the image: +X ± s points" over its seeds.

    X is the mean over seeds of (score - shuffled score) of the same run; a family whose X is not larger
    than max(1 point, s) is said to show no use of the image.
    """
    plain = {_run(r): r.value for r in rows if (r.task, r.metric) == (task, metric) and r.control is None}
    families: dict[tuple, list[tuple[float, float]]] = {}
    fractions: dict[str, float | None] = {}
    for r in rows:
        if (r.task, r.metric, r.control) != (task, metric, SHUFFLED):
            continue
        unshuffled = _run(r, r.split.partition(":")[0])
        if unshuffled in plain:
            family = (r.condition, r.split.partition(":")[0], (r.student, r.method, r.label))
            families.setdefault(family, []).append((plain[unshuffled], r.value))
            fractions[r.condition] = r.fraction
    if not families:
        return ["No image-shuffle control in these results (runs evaluated before it existed).", ""]
    order = sorted(families, key=lambda f: (condition_key(f[0], f[1], fractions[f[0]]), column_key(f[2])))
    lines = [f"- {_image_use_sentence(family, families[family])}" for family in order]
    intro = (
        "Image-shuffle control (every example scored again with another evaluation example's image): "
        '"uses the image: +X points" is the score minus the shuffled score of the same run, mean ± std over seeds.'
    )
    return [intro, "", *lines, ""]


def _image_use_sentence(family: tuple[str, str, Column], pairs: list[tuple[float, float]]) -> str:
    """``pairs``: (score, shuffled score) of each seed's run of the family."""
    condition, split, column = family
    gaps = [score - shuffled for score, shuffled in pairs]
    mean = statistics.fmean(gaps)
    spread = statistics.stdev(gaps) if len(gaps) > 1 else math.nan
    std = "–" if math.isnan(spread) else f"{spread:.2f}"
    seeds = f"{len(gaps)} seed{'s' if len(gaps) > 1 else ''}"
    scores = f"{statistics.fmean(p[0] for p in pairs):.2f} vs {statistics.fmean(p[1] for p in pairs):.2f} shuffled"
    line = f"{row_label(condition, split)}, {header(column)}: uses the image: {mean:+.2f} ± {std} points"
    line += f" ({seeds}; {scores})"
    if math.isnan(spread):
        return line + "; one seed: not established."
    if mean <= threshold(spread):
        return line + f"; not larger than max({MIN_EFFECT:g} point, its std {spread:.2f}): no sign it uses the image."
    return line + "."


def _run(row: ResultRow, split: str | None = None) -> tuple:
    return row.condition, split or row.split, row.student, row.method, row.label, row.seed


def breakdown_tables(cells: Sequence[Cell], task: str, primary: str, render: Callable[[Cell], str]) -> list[str]:
    """Markdown lines: for each group of the primary metric's breakdowns (``<primary>/<group>/<value>``, e.g.
    answer type, question type, class), a table of the ``full`` condition: rows = values (alphabetical),
    columns = columns, cells ``render``-ed."""
    full = [
        c
        for c in cells
        if (c.task, c.condition, c.split, c.control) == (task, "full", "eval", None)
        and is_breakdown(c.metric)
        and c.metric.startswith(primary + "/")
    ]
    groups: dict[str, list[Cell]] = {}
    for cell in full:
        group = cell.metric[len(primary) + 1 :].split("/", 1)[0]
        groups.setdefault(group, []).append(cell)
    out = []
    for group, members in groups.items():
        columns = _columns(members)
        values = list(dict.fromkeys(c.metric[len(primary) + len(group) + 2 :] for c in members))
        at = {(c.metric, c.column): c for c in members}
        body = [
            [value, *(render(at[k]) if (k := (f"{primary}/{group}/{value}", col)) in at else "" for col in columns)]
            for value in values
        ]
        title = f"{primary} per {group.replace('_', ' ')} (full condition; mean ± std (seeds)):"
        out += [title, "", markdown_table([group.replace("_", " "), *map(header, columns)], body), ""]
    return out


def selection_line(cells: Sequence[Cell], task: str, primary: str) -> str:
    """One line: checkpoints were selected on dev, with the mean best step per condition (or that they were not)."""
    own = [c for c in cells if c.task == task and c.metric == primary and c.control is None and c.split == "eval"]
    steps: dict[str, list[tuple[float, int]]] = {}
    for cell in sorted(own, key=lambda c: condition_key(c.condition, c.split, c.fraction)):
        if cell.best_step is not None:
            steps.setdefault(cell.condition, []).append((cell.best_step, cell.n))
    if not steps:
        return "Model selection: these results record no dev selection; each score is of its run's last step."
    parts = []
    for condition, found in steps.items():
        runs = sum(n for _, n in found)
        mean = sum(step * n for step, n in found) / runs
        parts.append(f"{condition} {mean:.1f} ({runs} runs)")
    return (
        f"Model selection: each run's checkpoint is the one with the best dev {primary}, and the scores above "
        f"are that checkpoint's; mean selected step: {', '.join(parts)}."
    )


@dataclass(frozen=True)
class Comparison:
    """A distilled cell against its baseline (the same student's ``none``) on the primary metric."""

    cell: Cell
    base: Cell | None

    @property
    def delta(self) -> float:
        return math.nan if self.base is None else self.cell.mean - self.base.mean

    @property
    def spread(self) -> float:
        return math.nan if self.base is None else pooled_std(self.cell, self.base)

    @property
    def appeared(self) -> bool:
        """The gain is larger than max(1 point, pooled std) (never with an unknown spread or baseline)."""
        return not math.isnan(self.spread) and self.delta > threshold(self.spread)

    def sentence(self) -> str:
        cell, base = self.cell, self.base
        where = f"{cell.task}, {row_label(cell.condition, cell.split)}: {header(cell.column)}"
        if base is None:
            return f"{where}: no `none` baseline of student {cell.student} ran; the gain is unknown."
        where += f" vs {header(base.column)}"
        versus = f"({cell.mean:.2f} vs {base.mean:.2f})"
        if self.appeared:
            times = self.delta / threshold(self.spread)
            return f"{where}: {self.delta:+.2f} points {versus}, {times:.2f} times {_threshold_words(self.spread)}."
        if self.delta <= 0:
            return f"{where}: no gain, {self.delta:+.2f} points {versus}."
        if math.isnan(self.spread):
            return (
                f"{where}: {self.delta:+.2f} points {versus} on one seed each: the spread is unknown; not established."
            )
        return f"{where}: {self.delta:+.2f} points {versus}, not larger than {_threshold_words(self.spread)}."


def comparisons(cells: Sequence[Cell]) -> list[Comparison]:
    """Every distilled cell (not ``none``, not the prior; no shuffle control) against its baseline, in order."""
    return [
        Comparison(c, baseline_of(c, cells))
        for c in cells
        if c.method not in (BASELINE, PRIOR) and c.control is None and not is_breakdown(c.metric)
    ]


def verdict_sections(found: Sequence[Comparison]) -> list[str]:
    """``## What did not appear`` and ``## What did appear``, one plain line per comparison."""
    rule = (
        "Each comparison the protocol makes: every method against the same student's `none` baseline, per "
        "condition (DiDE against the plain dual encoder), on the task's primary metric. A gain counts when it "
        f"is larger than the threshold max({MIN_EFFECT:g} point, the pooled std over seeds)."
    )
    missing = [f"- {c.sentence()}" for c in found if not c.appeared]
    shown = [f"- {c.sentence()}" for c in found if c.appeared]
    return [
        "## What did not appear",
        "",
        rule,
        "",
        *(missing or ["Every comparison showed a gain larger than its threshold."]),
        "",
        "## What did appear",
        "",
        *(shown or ["No comparison showed a gain larger than its threshold."]),
        "",
    ]
