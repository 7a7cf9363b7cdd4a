"""VCR reader: golden round trip with object references and boxes, and defects named by line."""

from __future__ import annotations

import json
from pathlib import Path

from vldistill.data.readers import read_task_report, read_vcr
from vldistill.data.records import VCRObjectBox

FILE = "train.jsonl"
META = "3015_CHARLIE_ST_CLOUD_00.23.57.935-00.24.00.783@0.json"


def _metadata_path(root: Path) -> Path:
    return root / "vcr1images" / "lsmdc_3015_CHARLIE_ST_CLOUD" / META


def test_golden_round_trip(vcr_root: Path) -> None:
    first, second = read_vcr(vcr_root, "train")
    assert first.annot_id == "train-0" and second.annot_id == "train-1"
    assert first.image_path == (
        vcr_root.absolute()
        / "vcr1images"
        / "lsmdc_3015_CHARLIE_ST_CLOUD"
        / "3015_CHARLIE_ST_CLOUD_00.23.57.935-00.24.00.783@0.jpg"
    )
    assert first.objects == ("person", "person", "car")
    assert first.question == ("Does", [0], "feel", "comfortable", "?")
    assert first.answer_choices[1] == ("No", "she", "does", "not", ".")
    assert first.answer_choices[2] == ("Yes", ",", [0, 1], "are", "friends", ".")
    assert first.rationale_choices[1] == ([1], "is", "laughing", ".")
    assert (first.answer_label, first.rationale_label) == (1, 0)
    assert second.question == ("What", "is", [1, 0], "doing", "?")
    assert first.boxes == (
        VCRObjectBox("person", 10.0, 12.5, 40.0, 60.0, 0.99),
        VCRObjectBox("person", 45.0, 10.0, 70.0, 58.0, 0.97),
        VCRObjectBox("car", 0.0, 30.0, 20.0, 48.0, 0.8),
    )
    assert (first.width, first.height) == (80, 64) and second.boxes == first.boxes


def test_test_split_has_no_labels(vcr_root: Path) -> None:
    rows = [json.loads(line) for line in (vcr_root / FILE).read_text().splitlines()]
    for row in rows:
        del row["answer_label"], row["rationale_label"]
    (vcr_root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_vcr(vcr_root, "test")
    assert [(r.answer_label, r.rationale_label) for r in records] == [(None, None), (None, None)]


def test_object_reference_out_of_range(vcr_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(vcr_root / FILE, 1, lambda row: row["answer_choices"][2].__setitem__(1, [3]))
    data_error(
        lambda: read_vcr(vcr_root, "train"),
        file=FILE,
        record="line 2 (annot_id train-1)",
        problem="answer_choices[2][1] refers to object 3, but the record has 3 objects",
    )


def test_missing_label_on_train(vcr_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(vcr_root / FILE, 0, lambda row: row.pop("rationale_label"))
    data_error(
        lambda: read_vcr(vcr_root, "train"),
        file=FILE,
        record="line 1",
        problem="missing field 'rationale_label'",
    )


def test_label_out_of_range(vcr_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(vcr_root / FILE, 0, lambda row: row.update(answer_label=4))
    data_error(lambda: read_vcr(vcr_root, "train"), file=FILE, record="line 1", problem="answer_label is 4")


def test_three_answer_choices(vcr_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(vcr_root / FILE, 1, lambda row: row["answer_choices"].pop())
    data_error(lambda: read_vcr(vcr_root, "train"), file=FILE, record="line 2", problem="has 3 choices, expected 4")


def test_image_path_escaping_root(vcr_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(vcr_root / FILE, 0, lambda row: row.update(img_fn="../../etc/passwd"))
    data_error(
        lambda: read_vcr(vcr_root, "train"),
        file=FILE,
        record="line 1 (annot_id train-0)",
        problem="field 'img_fn' ('../../etc/passwd') points outside",
    )


def test_box_count_mismatch_names_metadata_and_record(vcr_root: Path, edit_json, data_error) -> None:
    def drop_box(meta: dict) -> None:
        meta["boxes"].pop()
        meta["names"].pop()

    edit_json(_metadata_path(vcr_root), drop_box)
    data_error(
        lambda: read_vcr(vcr_root, "train"),
        file=META,
        record="metadata of train.jsonl line 1 (annot_id train-0)",
        problem="has 2 boxes and 2 names but the record has 3 objects",
    )
    records, skipped = read_task_report("vcr", vcr_root, "train")
    assert records == []
    # The metadata file is parsed once, but each record sharing it is reported under its own line.
    lines = skipped.lines()
    assert len(lines) == 2
    assert "line 1 (annot_id train-0)" in lines[0] and "line 2 (annot_id train-1)" in lines[1]


def test_missing_metadata_file(vcr_root: Path, data_error) -> None:
    _metadata_path(vcr_root).unlink()
    data_error(lambda: read_vcr(vcr_root, "train"), file=META, record="line 1", problem="VCR metadata file not found")
