"""``vldistill.protocol.report``: tables, gains, controls, what did (not) appear, CSV, plots and bad input."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from matplotlib.container import ErrorbarContainer
from PIL import Image

from vldistill.errors import DataError
from vldistill.protocol.cells import ResultRow, aggregate, pooled_std, read_results
from vldistill.protocol.controls import image_use_lines, prior_section
from vldistill.protocol.plots import dodge, error_bars, figure_dide, figure_lowshot, figure_shift, seeds_caption
from vldistill.protocol.report import format_cell, summary_table, write_report

# (task, condition, split, fraction, student, method, metric) -> values over seeds 0, 1, 2, ...
VQA = "vqa_accuracy"
CELLS = {
    ("vqa", "full", "eval", None, "fusion", "none", VQA): [40, 42, 44],
    ("vqa", "full", "eval", None, "fusion", "kd", VQA): [41, 42, 43],
    ("vqa", "full", "eval", None, "fusion", "clip_td", VQA): [44, 45, 46],
    ("vqa", "full", "eval", None, "dual", "none", VQA): [30, 31, 32],
    ("vqa", "full", "eval", None, "dual", "dide", VQA): [35, 36, 37],
    ("vqa", "shift", "shifted", None, "fusion", "none", VQA): [30, 32, 34],
    ("vqa", "shift", "shifted", None, "fusion", "clip_td", VQA): [34, 35, 36],
    ("vqa", "lowshot-0.25", "eval", 0.25, "fusion", "none", VQA): [30],
    ("vqa", "lowshot-0.25", "eval", 0.25, "fusion", "clip_td", VQA): [33],
    ("vqa", "lowshot-0.1", "eval", 0.1, "fusion", "none", VQA): [20, 22, 24],
    ("vqa", "lowshot-0.1", "eval", 0.1, "fusion", "clip_td", VQA): [21, 23, 25],
    ("snli_ve", "full", "eval", None, "fusion", "none", "accuracy"): [60, 62],
    ("snli_ve", "full", "eval", None, "fusion", "none", "accuracy_entailment"): [70, 74],
}
MS = {"fusion": 4.0, "dual": 1.0}
DEPLOY_MS = {"fusion": 4.0, "dual": 0.5}  # a dual encoder's images encoded ahead: its image tower not timed


def _rows() -> list[dict]:
    rows = []
    for (task, condition, split, fraction, student, method, metric), values in CELLS.items():
        for seed, value in enumerate(values):
            rows.append(
                {
                    "task": task,
                    "condition": condition,
                    "method": method,
                    "student": student,
                    "seed": seed,
                    "metric": metric,
                    "value": value,
                    "split": split,
                    "train_examples": 1500,
                    "seconds": 12.0,
                    "fraction": fraction,
                    "eval_ms_per_example": MS[student],
                    "eval_deploy_ms_per_example": DEPLOY_MS[student],
                }
            )
    return rows


def _write(folder: Path, rows: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("protocol")
    rows = _rows()
    rerun = dict(rows[0], value=99.0)  # an earlier run of fusion/none/full seed 0, replaced by rows[0]
    _write(folder, [rerun, *rows[::-1]])  # reversed: the report must order conditions itself
    (folder / "protocol.json").write_text(json.dumps({"name": "demo", "seeds": [0, 1, 2]}))
    write_report(folder)
    return folder


def _table_line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def _section(text: str, title: str) -> str:
    """The part of report.md from heading ``## title`` to the next ``## ``."""
    return text.split(f"## {title}\n")[1].split("\n## ")[0]


def test_main_table_cells_bold_and_condition_order(report_dir: Path) -> None:
    vqa = _section((report_dir / "report.md").read_text(), "vqa: vqa_accuracy").split("Gain over")[0]
    assert "| condition | fusion / none | fusion / kd | fusion / clip_td | dual / none | dual / dide |" in vqa
    assert _table_line(vqa, "| full |") == (
        "| full | 42.00 ± 2.00 (3) | 42.00 ± 1.00 (3) | **45.00 ± 1.00 (3)** | 31.00 ± 1.00 (3) | 36.00 ± 1.00 (3) |"
    )
    assert _table_line(vqa, "| lowshot-0.25 |") == ("| lowshot-0.25 | 30.00 ± – (1) |  | **33.00 ± – (1)** |  |  |")
    order = [line.split(" | ")[0] for line in vqa.splitlines() if line.startswith("| ")]
    assert order == ["| condition", "| ---", "| full", "| lowshot-0.1", "| lowshot-0.25", "| shift"]


def test_gain_table(report_dir: Path) -> None:
    gains = (report_dir / "report.md").read_text().split("Gain over")[1]
    assert "| condition | fusion / kd | fusion / clip_td | dual / dide |" in gains
    assert _table_line(gains, "| full |") == "| full | +0.00 | +3.00 | +5.00 |"
    assert _table_line(gains, "| shift |") == "| shift |  | +3.00 |  |"


def test_what_did_not_appear_and_what_did(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    missing = [line for line in _section(text, "What did not appear").splitlines() if line.startswith("- ")]
    assert missing == [
        "- vqa, full: fusion / kd vs fusion / none: no gain, +0.00 points (42.00 vs 42.00).",
        "- vqa, lowshot-0.1: fusion / clip_td vs fusion / none: +1.00 points (23.00 vs 22.00), not larger than "
        "the threshold 2.00 (the larger of 1 point and the pooled std 2.00).",
        "- vqa, lowshot-0.25: fusion / clip_td vs fusion / none: +3.00 points (33.00 vs 30.00) on one seed each: "
        "the spread is unknown; not established.",
    ]
    shown = [line for line in _section(text, "What did appear").splitlines() if line.startswith("- ")]
    # clip_td full: 45 vs 42, pooled std sqrt((2*2^2 + 2*1^2) / 4) = 1.58 > 1 point; dide: 36 vs 31, std 1
    assert shown == [
        "- vqa, full: fusion / clip_td vs fusion / none: +3.00 points (45.00 vs 42.00), 1.90 times the threshold "
        "1.58 (the larger of 1 point and the pooled std 1.58).",
        "- vqa, full: dual / dide vs dual / none: +5.00 points (36.00 vs 31.00), 5.00 times the threshold 1.00 "
        "(the larger of 1 point and the pooled std 1.00).",
        "- vqa, shift: fusion / clip_td vs fusion / none: +3.00 points (35.00 vs 32.00), 1.90 times the threshold "
        "1.58 (the larger of 1 point and the pooled std 1.58).",
    ]


def test_old_results_say_the_controls_are_missing(report_dir: Path) -> None:
    controls = (report_dir / "report.md").read_text().split("### vqa: controls\n")[1].split("\n## ")[0]
    assert controls.strip().splitlines() == [
        "No text-only prior in these results: add a method entry with `student: {kind: prior}` to the protocol "
        "to see what the question alone gives.",
        "",
        "No image-shuffle control in these results (runs evaluated before it existed).",
    ]
    assert "Model selection: these results record no dev selection; each score is of its run's last step." in (
        _section((report_dir / "report.md").read_text(), "vqa: vqa_accuracy")
    )


def test_header_protocol_secondary_and_dide_tables(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    assert "- tasks: vqa, snli_ve" in text
    assert "- conditions: full, lowshot-0.1, lowshot-0.25, shift" in text
    assert "- seeds: 0, 1, 2" in text
    # vqa: 5 full x 3 + 2 x 3 + 2 x 1 low-shot runs (the shifted rows belong to the full runs); snli_ve: 2
    assert "- finished runs: 25 (33 result rows)" in text
    assert f"`vldistill report {report_dir}`" in text
    assert '| `name` | "demo" |' in text
    snli = _section(text, "snli_ve: accuracy")
    assert _table_line(snli, "| full | fusion / none |") == (
        "| full | fusion / none | 72.00 ± 2.83 (2) | 1500 | 12.0 | 4.00 |"
    )
    assert "| dual / dide | 36.00 ± 1.00 (3) | 1.00 | 0.50 | 8.00x |" in text


def test_summary_csv(report_dir: Path) -> None:
    with (report_dir / "summary.csv").open() as f:
        rows = {(r["task"], r["condition"], r["student"], r["method"], r["metric"]): r for r in csv.DictReader(f)}
    base = rows["vqa", "full", "fusion", "none", VQA]
    assert [base[k] for k in ("mean", "std", "n", "gain", "split")] == ["42.0000", "2.0000", "3", "", "eval"]
    clip = rows["vqa", "shift", "fusion", "clip_td", VQA]
    assert (float(clip["mean"]), float(clip["gain"]), clip["split"]) == (35.0, 3.0, "shifted")
    single = rows["vqa", "lowshot-0.25", "fusion", "clip_td", VQA]
    assert (single["std"], single["n"], float(single["gain"])) == ("", "1", 3.0)
    assert float(rows["snli_ve", "full", "fusion", "none", "accuracy_entailment"]["mean"]) == 72.0
    assert len(rows) == len(CELLS)


def test_plots_are_png_and_linked(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    for name in ("vqa_lowshot.png", "vqa_shift.png", "vqa_dide.png"):
        assert f"]({name})" in text
        with Image.open(report_dir / name) as image:
            assert image.format == "PNG" and image.size[0] > 100
    # snli_ve has only the full condition and no dual student: nothing to plot
    assert sorted(p.name for p in report_dir.glob("snli_ve*")) == []


def test_summary_table_and_rerun_kept_last(report_dir: Path) -> None:
    table = summary_table(report_dir)
    assert table.startswith("vqa (vqa_accuracy)\n\n| condition | fusion / none |")
    assert "\n\nsnli_ve (accuracy)\n\n" in table
    assert "| full | **61.00 ± 1.41 (2)** |" in table
    rows = read_results(report_dir / "results.jsonl")
    assert len(rows) == sum(len(v) for v in CELLS.values())
    key = ("vqa", "full", "fusion", "none", 0)
    first = next(r for r in rows if (r.task, r.condition, r.student, r.method, r.seed) == key)
    assert first.value == 40 and first.label == "none"


def test_cell_statistics(tmp_path: Path) -> None:
    rows = read_results(_write(tmp_path, _rows()) / "results.jsonl")
    cells = {(c.method, c.condition): c for c in aggregate(rows) if c.task == "vqa" and c.student == "fusion"}
    assert format_cell(cells["none", "lowshot-0.25"]) == "30.00 ± – (1)"
    assert pooled_std(cells["none", "full"], cells["kd", "full"]) == pytest.approx(math.sqrt(2.5))
    assert math.isnan(pooled_std(cells["none", "lowshot-0.25"], cells["clip_td", "lowshot-0.25"]))


def test_absent_protocol_json_is_fine_and_stale_plots_go(tmp_path: Path) -> None:
    (tmp_path / "vqa_lowshot.png").write_bytes(b"left by an earlier report")
    report = write_report(_write(tmp_path, _rows()[:3]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.jsonl", "summary.csv"]
    assert "Protocol settings" not in report.read_text()
    assert "No comparison showed a gain larger than its threshold." in report.read_text()


@pytest.mark.parametrize(
    ("lines", "record", "problem"),
    [
        (['{"task": "vqa", '], "line 2", "malformed JSON"),
        (["[1, 2]"], "line 2", "expected a JSON object"),
        ([json.dumps({k: v for k, v in _rows()[0].items() if k != "value"})], "line 2", "missing field 'value'"),
        ([json.dumps(dict(_rows()[0], seed="0"))], "line 2", "field 'seed'"),
        ([json.dumps(dict(_rows()[0], value=True))], "line 2", "field 'value'"),
        ([json.dumps(dict(_rows()[0], eval_ms_per_example="fast"))], "line 2", "field 'eval_ms_per_example'"),
    ],
)
def test_bad_lines(tmp_path: Path, lines: list[str], record: str, problem: str) -> None:
    _write(tmp_path, _rows()[:1], tuple(lines))
    with pytest.raises(DataError) as err:
        write_report(tmp_path)
    assert err.value.record == record and problem in err.value.problem
    assert err.value.file == str(tmp_path / "results.jsonl") and err.value.fix


def test_empty_and_missing_results(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no finished runs yet"):
        write_report(tmp_path)
    with pytest.raises(DataError, match="results file not found"):
        summary_table(tmp_path / "elsewhere")


def test_bad_bytes_and_bad_protocol_json(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_bytes(b'{"task": "vq\xff"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        write_report(tmp_path)
    _write(tmp_path, _rows()[:1])
    (tmp_path / "protocol.json").write_text("{name: demo")
    with pytest.raises(DataError) as err:
        write_report(tmp_path)
    assert err.value.file == str(tmp_path / "protocol.json") and "malformed JSON" in err.value.problem


def test_null_optional_fields_are_tolerated(tmp_path: Path) -> None:
    rows = [dict(r, eval_ms_per_example=None, seconds=None) for r in _rows()[:3]]
    text = write_report(_write(tmp_path, rows)).read_text()
    assert _table_line(text, "| full |") == "| full | **42.00 ± 2.00 (3)** |"


def test_method_labels_stay_apart_and_baseline_found_by_method(tmp_path: Path) -> None:
    def row(label: str, student: str, method: str, seed: int, value: float) -> dict:
        return {
            "task": "nlvr2",
            "condition": "full",
            "method": method,
            "label": label,
            "student": student,
            "seed": seed,
            "metric": "accuracy",
            "value": value,
            "split": "eval",
            "fraction": None,
        }

    rows = [row("none", "fusion", "none", s, v) for s, v in enumerate([50, 52])]
    rows += [row("clip_td-l1", "fusion", "clip_td", s, v) for s, v in enumerate([60, 62])]
    rows += [row("clip_td-cos", "fusion", "clip_td", s, v) for s, v in enumerate([51, 53])]
    rows += [row("dual", "dual", "none", s, v) for s, v in enumerate([40, 40])]
    rows += [row("dide", "dual", "dide", s, v) for s, v in enumerate([45, 45])]
    rows += [row("mad", "other", "mad", 0, 1.0)]
    text = write_report(_write(tmp_path, rows)).read_text()
    assert _table_line(text, "| condition | fusion / none |") == (
        "| condition | fusion / none | fusion / clip_td-cos (clip_td) | fusion / clip_td-l1 (clip_td) "
        "| dual / dual (none) | dual / dide | other / mad |"
    )
    assert "| full | +1.00 | +10.00 | +5.00 |  |" in text
    assert (
        "- nlvr2, full: fusion / clip_td-cos (clip_td) vs fusion / none: +1.00 points (52.00 vs 51.00), not larger "
        "than the threshold 1.41 (the larger of 1 point and the pooled std 1.41)." in text
    )
    assert "- nlvr2, full: other / mad: no `none` baseline of student other ran; the gain is unknown." in text
    # 45 vs 40 with zero spread: a gain of 5 times the 1-point floor
    assert (
        "- nlvr2, full: dual / dide vs dual / dual (none): +5.00 points (45.00 vs 40.00), 5.00 times the threshold "
        "1.00 (the larger of 1 point and the pooled std 0.00)." in _section(text, "What did appear")
    )


def test_protocol_settings_are_whole_one_row_per_leaf(tmp_path: Path) -> None:
    long_path = "/data/" + "very-long-folder/" * 20 + "vqa"
    spec = {
        "name": "paper",
        "base": {"data": {"root": long_path}, "train": {"lr": 0.0001}},
        "tasks": ["vqa", "nlvr2"],
        "conditions": [{"name": "full", "fraction": None}, {"name": "low|shot", "fraction": 0.1}],
        "methods": {"none": {"method": {"name": "none"}}},
        "roots": {},
    }
    _write(tmp_path, _rows()[:3])
    (tmp_path / "protocol.json").write_text(json.dumps(spec))
    text = write_report(tmp_path).read_text()
    rows = text.split("Protocol settings (`protocol.json`):\n\n")[1].split("\n\n")[0].splitlines()
    assert rows == [
        "| setting | value |",
        "| --- | --- |",
        '| `name` | "paper" |',
        f'| `base.data.root` | "{long_path}" |',
        "| `base.train.lr` | 0.0001 |",
        '| `tasks` | ["vqa", "nlvr2"] |',
        '| `conditions[0].name` | "full" |',
        "| `conditions[0].fraction` | null |",
        '| `conditions[1].name` | "low\\|shot" |',
        "| `conditions[1].fraction` | 0.1 |",
        '| `methods.none.method.name` | "none" |',
        "| `roots` | {} |",
    ]


def _cells(values: dict[tuple[str, str, float | None, str], list[float]], ms: float | None = None) -> list:
    """Cells of task vqa from ``(condition, split, fraction, student/method) -> values over seeds``."""
    rows = []
    for (condition, split, fraction, column), seeds in values.items():
        student, method = column.split("/")
        for seed, value in enumerate(seeds):
            rows.append(
                {
                    "task": "vqa",
                    "condition": condition,
                    "method": method,
                    "student": student,
                    "seed": seed,
                    "metric": VQA,
                    "value": value,
                    "split": split,
                    "fraction": fraction,
                    "eval_ms_per_example": ms if ms is not None else MS[student],
                }
            )
    return aggregate([ResultRow(**dict(r, label=r["method"])) for r in rows])


def _errorbar_segments(ax) -> list[list[tuple[float, float, float]]]:
    """Per error-bar container: ``(x, low, high)`` of each vertical bar, in point order."""
    out = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            (bars,) = container.lines[2]
            out.append([(seg[0][0], seg[0][1], seg[1][1]) for seg in bars.get_segments()])
    return out


def test_lowshot_error_bars_stay_in_range_and_columns_are_dodged() -> None:
    cells = _cells(
        {
            ("full", "eval", None, "fusion/none"): [95.0, 99.0, 100.0],  # mean 98, std 2.65: capped at 100
            ("full", "eval", None, "fusion/clip_td"): [96.0, 98.0, 100.0],  # mean 98, std 2: whole
            ("lowshot-0.1", "eval", 0.1, "fusion/none"): [0.0, 0.0, 6.0],  # mean 2, std 3.46: floored at 0
            ("lowshot-0.1", "eval", 0.1, "fusion/clip_td"): [1.0, 2.0, 3.0],
        }
    )
    fig = figure_lowshot("vqa", VQA, cells)
    none, clip = _errorbar_segments(fig.axes[0])
    std_none_full = statistics.stdev([95.0, 99.0, 100.0])
    assert [(low, high) for _, low, high in none] == [(0.0, 2.0 + 12**0.5), (98.0 - std_none_full, 100.0)]
    assert [(low, high) for _, low, high in clip] == [(1.0, 3.0), (96.0, 100.0)]
    # the two columns sit either side of each fraction, symmetric on the log axis, never on top of each other
    for (x_none, _, _), (x_clip, _, _), fraction in zip(none, clip, (0.1, 1.0), strict=True):
        assert x_none < fraction < x_clip
        assert math.log10(fraction / x_none) == pytest.approx(math.log10(x_clip / fraction))
        assert math.log10(x_clip / x_none) == pytest.approx(0.5 * 1.0 / 2)  # half the gap, over 2 columns
    assert fig.texts[-1].get_text() == "Values: mean ± std over 3 seeds; error bars clipped to 0–100."


def test_shift_bars_are_clipped_and_the_caption_gives_the_seed_range() -> None:
    cells = _cells(
        {
            ("full", "eval", None, "fusion/none"): [99.0, 100.0, 100.0, 97.0],
            ("shift", "shifted", None, "fusion/none"): [1.0, 0.0],
        }
    )
    fig = figure_shift("vqa", VQA, cells)
    in_domain, shifted = _errorbar_segments(fig.axes[0])
    std = statistics.stdev([99.0, 100.0, 100.0, 97.0])
    assert [(low, high) for _, low, high in in_domain] == [pytest.approx((99.0 - std, 100.0))]
    assert [(low, high) for _, low, high in shifted] == [(0.0, 0.5 + statistics.stdev([1.0, 0.0]))]
    assert fig.texts[-1].get_text() == (
        "Values: mean ± std over 2–4 seeds (n per point: see the table); error bars clipped to 0–100."
    )


def test_dide_points_of_equal_cost_are_dodged() -> None:
    cells = _cells(
        {
            ("full", "eval", None, "fusion/none"): [50.0],
            ("full", "eval", None, "dual/none"): [40.0],
            ("full", "eval", None, "dual/dide"): [45.0],
        },
        ms=2.0,
    )
    xs = [segments[0][0] for segments in _errorbar_segments(figure_dide("vqa", VQA, cells).axes[0])]
    assert xs == pytest.approx([2.0 - 0.06, 2.0, 2.0 + 0.06])  # 3% of the widest cost apart, centred
    assert dodge([1.0, 1.0, 5.0, 1.0], 0.5) == [0.5, 1.0, 5.0, 1.5]
    assert dodge([0.1, 0.1], 0.2, log=True) == pytest.approx([0.1 / 10**0.1, 0.1 * 10**0.1])


def test_error_bars_and_report_caption(report_dir: Path) -> None:
    single = _cells({("full", "eval", None, "fusion/none"): [101.0]})  # out of range: no negative bar
    assert error_bars(single) == [[0.0], [0.0]]
    assert (
        seeds_caption(single) == "Values: mean ± std over 1 seed (one seed: no error bar); error bars clipped to 0–100."
    )
    text = (report_dir / "report.md").read_text()
    assert (
        "![vqa: lowshot](vqa_lowshot.png)\n\n*Values: mean ± std over 1–3 seeds (n per point: see the table);" in text
    )


# The controls: (condition, split, fraction, column, metric) -> values over seeds 0, 1, 2
YES_NO, OTHER, COLOUR = f"{VQA}/answer_type/yes/no", f"{VQA}/answer_type/other", f"{VQA}/question_type/what color"
CONTROLS = {
    ("full", "eval", None, "prior/prior", VQA): [40.0, 41.0, 42.0],
    ("full", "eval:shuffled", None, "prior/prior", VQA): [40.0, 41.0, 42.0],
    ("full", "eval", None, "fusion/none", VQA): [50.0, 52.0, 54.0],
    ("full", "eval:shuffled", None, "fusion/none", VQA): [41.0, 42.0, 43.0],
    ("full", "eval", None, "fusion/clip_td", VQA): [51.0, 52.0, 53.0],
    ("full", "eval:shuffled", None, "fusion/clip_td", VQA): [50.0, 52.0, 53.0],
    ("lowshot-0.1", "eval", 0.1, "prior/prior", VQA): [30.0, 30.0, 30.0],
    ("lowshot-0.1", "eval", 0.1, "fusion/none", VQA): [30.5, 31.0, 31.5],
    ("lowshot-0.1", "eval", 0.1, "fusion/clip_td", VQA): [33.0, 34.0, 35.0],
    ("full", "eval", None, "prior/prior", YES_NO): [60.0, 62.0, 64.0],
    ("full", "eval", None, "fusion/none", YES_NO): [70.0, 70.0, 70.0],
    ("full", "eval", None, "prior/prior", OTHER): [20.0, 20.0, 20.0],
    ("full", "eval", None, "fusion/none", OTHER): [30.0, 32.0, 34.0],
    ("full", "eval", None, "fusion/none", COLOUR): [25.0, 25.0, 25.0],
}
BEST_STEP = {("full", "fusion/none"): [100, 120, 140], ("full", "fusion/clip_td"): [90, 90, 90]}
BEST_STEP |= {("full", "prior/prior"): [30, 30, 30], ("lowshot-0.1", "fusion/none"): [40, 40, 40]}


def _control_rows() -> list[dict]:
    rows = []
    for (condition, split, fraction, column, metric), values in CONTROLS.items():
        student, method = column.split("/")
        for seed, value in enumerate(values):
            steps = BEST_STEP.get((condition, column))
            rows.append(
                {
                    "task": "vqa",
                    "condition": condition,
                    "method": method,
                    "label": method,
                    "student": student,
                    "seed": seed,
                    "metric": metric,
                    "value": value,
                    "split": split,
                    "control": "shuffled" if split.endswith(":shuffled") else None,
                    "fraction": fraction,
                    "dev": 55.0 if steps else None,
                    "best_step": steps[seed] if steps else None,
                }
            )
    return rows


@pytest.fixture(scope="module")
def controls_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = _write(tmp_path_factory.mktemp("controls"), _control_rows())
    return folder, write_report(folder).read_text()


def _lines(section: str, start: str = "- ") -> list[str]:
    return [line for line in section.splitlines() if line.startswith(start)]


def test_the_prior_is_a_column_of_the_main_table_not_of_the_gains(controls_report) -> None:
    _, text = controls_report
    main = _section(text, "vqa: vqa_accuracy")
    assert _table_line(main, "| condition |") == "| condition | text-only prior | fusion / none | fusion / clip_td |"
    assert _table_line(main, "| full |") == "| full | 41.00 ± 1.00 (3) | **52.00 ± 2.00 (3)** | **52.00 ± 1.00 (3)** |"
    gains = main.split("Gain over")[1]
    assert _table_line(gains, "| condition |") == "| condition | fusion / clip_td |"
    assert "eval:shuffled" not in main.split("### vqa: controls")[0]  # the control is not a row of the tables


def test_controls_margin_over_the_prior(controls_report) -> None:
    _, text = controls_report
    controls = text.split("### vqa: controls\n")[1].split("\n### ")[0]
    assert (
        _table_line(controls, "| condition |") == "| condition | text-only prior | fusion / none | fusion / clip_td |"
    )
    assert _table_line(controls, "| full |") == "| full | 41.00 ± 1.00 (3) | +11.00 | +11.00 |"
    assert _table_line(controls, "| lowshot-0.1 |") == "| lowshot-0.1 | 30.00 ± 0.00 (3) | +1.00 | +4.00 |"
    # the baselines' margins in words; lowshot none: +1.00 is not above max(1, pooled std sqrt(0.5 / 4) = 0.35)
    assert _lines(controls.split("Image-shuffle control")[0]) == [
        "- full, fusion / none: +11.00 points over the text-only prior (52.00 vs 41.00).",
        "- lowshot-0.1, fusion / none: +1.00 points over the text-only prior (31.00 vs 30.00), not larger than the "
        "threshold 1.00 (the larger of 1 point and the pooled std 0.35): no better than the text alone.",
    ]


def test_controls_image_shuffle_per_run_family(controls_report) -> None:
    _, text = controls_report
    controls = text.split("### vqa: controls\n")[1].split("\n### ")[0]
    # none: 52 - 42 per seed pair (9, 10, 11): mean 10, std 1; clip_td: (1, 0, 0): mean 0.33, std 0.58
    assert _lines(controls.split("Image-shuffle control")[1]) == [
        "- full, text-only prior: uses the image: +0.00 ± 0.00 points (3 seeds; 41.00 vs 41.00 shuffled); not larger "
        "than max(1 point, its std 0.00): no sign it uses the image.",
        "- full, fusion / none: uses the image: +10.00 ± 1.00 points (3 seeds; 52.00 vs 42.00 shuffled).",
        "- full, fusion / clip_td: uses the image: +0.33 ± 0.58 points (3 seeds; 52.00 vs 51.67 shuffled); not "
        "larger than max(1 point, its std 0.58): no sign it uses the image.",
    ]


def test_per_group_tables_of_the_full_condition(controls_report) -> None:
    _, text = controls_report
    groups = text.split("### vqa: per group\n")[1].split("\n## ")[0]
    answer = groups.split("vqa_accuracy per answer type (full condition; mean ± std (seeds)):\n\n")[1].split("\n\n")[0]
    assert answer.splitlines() == [
        "| answer type | text-only prior | fusion / none |",
        "| --- | --- | --- |",
        "| other | 20.00 ± 0.00 (3) | 32.00 ± 2.00 (3) |",
        "| yes/no | 62.00 ± 2.00 (3) | 70.00 ± 0.00 (3) |",
    ]
    question = groups.split("vqa_accuracy per question type (full condition; mean ± std (seeds)):\n\n")[1]
    assert question.split("\n\n")[0].splitlines()[1:] == ["| --- | --- |", "| what color | 25.00 ± 0.00 (3) |"]


def test_model_selection_line_and_verdicts(controls_report) -> None:
    folder, text = controls_report
    # full: (100 + 120 + 140 + 3 * 90 + 3 * 30) / 9 = 80; lowshot-0.1: only none records it
    assert (
        "Model selection: each run's checkpoint is the one with the best dev vqa_accuracy, and the scores above "
        "are that checkpoint's; mean selected step: full 80.0 (9 runs), lowshot-0.1 40.0 (3 runs)."
    ) in text
    assert _lines(_section(text, "What did not appear")) == [
        "- vqa, full: fusion / clip_td vs fusion / none: no gain, +0.00 points (52.00 vs 52.00)."
    ]
    # 34 vs 31: pooled std sqrt((2 * 0.25 + 2 * 1) / 4) = 0.79, so the 1-point floor is the threshold
    assert _lines(_section(text, "What did appear")) == [
        "- vqa, lowshot-0.1: fusion / clip_td vs fusion / none: +3.00 points (34.00 vs 31.00), 3.00 times the "
        "threshold 1.00 (the larger of 1 point and the pooled std 0.79)."
    ]
    with (folder / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    shuffled = next(r for r in rows if r["split"] == "eval:shuffled" and r["method"] == "none")
    assert (shuffled["control"], shuffled["mean"], shuffled["dev"], shuffled["best_step"]) == (
        "shuffled",
        "42.0000",
        "55.0000",
        "120.0",
    )
    prior = next(
        r for r in rows if (r["condition"], r["split"], r["method"], r["metric"]) == ("full", "eval", "prior", VQA)
    )
    assert (prior["student"], prior["gain"], prior["control"]) == ("prior", "", "")


def test_the_prior_is_a_named_line_of_the_lowshot_plot(controls_report) -> None:
    folder, _ = controls_report
    cells = [c for c in aggregate(read_results(folder / "results.jsonl")) if c.metric == VQA and c.control is None]
    fig = figure_lowshot("vqa", VQA, cells)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["text-only prior", "fusion / none", "fusion / clip_td"]
    assert (folder / "vqa_lowshot.png").is_file() and not (folder / "vqa_shift.png").exists()


def test_controls_with_one_seed_say_what_cannot_be_checked() -> None:
    rows = [
        ResultRow("vqa", "full", "prior", "prior", 0, VQA, 30.0, "eval", "prior"),
        ResultRow("vqa", "full", "none", "fusion", 0, VQA, 30.5, "eval", "none"),
        ResultRow("vqa", "full", "none", "fusion", 0, VQA, 20.5, "eval:shuffled", "none", control="shuffled"),
    ]
    main = [c for c in aggregate(rows) if c.control is None]
    assert prior_section(main)[4] == (
        "- full, fusion / none: +0.50 points over the text-only prior (30.50 vs 30.00), not larger than 1 point "
        "(one seed each): no better than the text alone."
    )
    assert image_use_lines(rows, "vqa", VQA)[2] == (
        "- full, fusion / none: uses the image: +10.00 ± – points (1 seed; 30.50 vs 20.50 shuffled); one seed: "
        "not established."
    )
