"""VQA v2 reader: golden round trip on the official layout, and one test per kind of defect."""

from __future__ import annotations

import json
from pathlib import Path

from vldistill.data.readers import SkippedRecords, read_task, read_vqa
from vldistill.data.records import VQAAnswer, VQARecord

QUESTIONS = "v2_OpenEnded_mscoco_train2014_questions.json"
ANNOTATIONS = "v2_mscoco_train2014_annotations.json"


def test_golden_round_trip(vqa_root: Path) -> None:
    records = read_vqa(vqa_root, "train2014")
    image9 = vqa_root.absolute() / "train2014" / "COCO_train2014_000000000009.jpg"
    assert [r.question_id for r in records] == [9000, 9001, 25000]  # question-file order
    assert records[1] == VQARecord(
        question_id=9001,
        image_id=9,
        question="How many balls are there?",
        image_path=image9,
        question_type="how many",
        answer_type="number",
        multiple_choice_answer="2",
        answers=tuple(VQAAnswer("2", "yes", k + 1) for k in range(9)) + (VQAAnswer("two", "yes", 10),),
    )
    assert records[2].image_path.name == "COCO_train2014_000000000025.jpg"
    assert records[0].answers[8] == VQAAnswer("dark red", "yes", 9)
    assert read_task("vqa", vqa_root, "train2014") == records


def test_test_split_without_annotations(vqa_root: Path) -> None:
    """test-dev2015 ships questions only, and its images live in test2015."""
    top = {
        "info": {},
        "license": {},
        "data_subtype": "test-dev2015",
        "questions": [{"image_id": 1, "question": "What is this?", "question_id": 10}],
    }
    (vqa_root / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(top))
    (record,) = read_vqa(vqa_root, "test-dev2015")
    assert record.answers == () and record.multiple_choice_answer == ""
    assert record.image_path == vqa_root.absolute() / "test2015" / "COCO_test2015_000000000001.jpg"


def test_missing_annotations_on_train_split(vqa_root: Path, data_error) -> None:
    (vqa_root / ANNOTATIONS).unlink()
    data_error(lambda: read_vqa(vqa_root, "train2014"), file=ANNOTATIONS, record=None, problem="not found")


def test_truncated_json_names_line_and_column(vqa_root: Path, data_error) -> None:
    path = vqa_root / QUESTIONS
    path.write_text(path.read_text()[:-40])
    err = data_error(lambda: read_vqa(vqa_root, "train2014"), file=QUESTIONS, record=None, problem="line 1, column")
    assert "truncated" in err.problem


def test_non_utf8_bytes(vqa_root: Path, data_error) -> None:
    path = vqa_root / ANNOTATIONS
    path.write_bytes(path.read_bytes().replace(b'"red"', b'"r\xe9d"', 1))
    data_error(lambda: read_vqa(vqa_root, "train2014"), file=ANNOTATIONS, record=None, problem="non-UTF-8 byte 0xe9")


def test_question_without_annotation(vqa_root: Path, edit_json, data_error) -> None:
    edit_json(vqa_root / ANNOTATIONS, lambda top: top["annotations"].pop(0))
    data_error(
        lambda: read_vqa(vqa_root, "train2014"),
        file=QUESTIONS,
        record="questions[1] (question_id 9001)",
        problem="no annotation",
    )


def test_mistyped_question_id(vqa_root: Path, edit_json, data_error) -> None:
    edit_json(vqa_root / QUESTIONS, lambda top: top["questions"][2].update(question_id="25000"))
    data_error(
        lambda: read_vqa(vqa_root, "train2014"),
        file=QUESTIONS,
        record="questions[2]",
        problem="field 'question_id' is a string",
    )


def test_nine_answers(vqa_root: Path, edit_json, data_error) -> None:
    edit_json(vqa_root / ANNOTATIONS, lambda top: top["annotations"][2]["answers"].pop())
    data_error(
        lambda: read_vqa(vqa_root, "train2014"),
        file=ANNOTATIONS,
        record="annotations[2] (question_id 25000)",
        problem="has 9 answers",
    )


def test_bad_answer_confidence(vqa_root: Path, edit_json, data_error) -> None:
    edit_json(
        vqa_root / ANNOTATIONS,
        lambda top: top["annotations"][1]["answers"][3].update(answer_confidence="sure"),
    )
    data_error(
        lambda: read_vqa(vqa_root, "train2014"),
        file=ANNOTATIONS,
        record="(question_id 9000) answers[3]",
        problem="answer_confidence is 'sure'",
    )


def test_empty_question_skipped_and_reported(vqa_root: Path, edit_json, data_error) -> None:
    edit_json(vqa_root / QUESTIONS, lambda top: top["questions"][0].update(question="  "))
    data_error(
        lambda: read_vqa(vqa_root, "train2014"),
        file=QUESTIONS,
        record="questions[0] (question_id 9000)",
        problem="field 'question' is empty",
    )
    report = SkippedRecords()
    records = read_vqa(vqa_root, "train2014", skip_bad=True, report=report)
    assert [r.question_id for r in records] == [9001, 25000]
    assert len(report) == 1 and "question_id 9000" in report.lines()[0]


def test_wrong_split_file(vqa_root: Path, edit_json, data_error) -> None:
    edit_json(vqa_root / QUESTIONS, lambda top: top.update(data_subtype="val2014"))
    data_error(
        lambda: read_vqa(vqa_root, "train2014"),
        file=QUESTIONS,
        record=None,
        problem="data_subtype is 'val2014'",
    )
