"""VQA accuracy against golden values worked out by hand from the official vqaEval.py behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vldistill.errors import DataError
from vldistill.metrics.vqa import (
    answer_scores,
    evaluate_vqa,
    load_and_evaluate,
    normalize_answer,
    question_accuracy,
)


def gts(*answers: str) -> list[dict]:
    """Official answer dicts, ids 1..n as in the annotation files."""
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(answers, 1)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("dont", "don't"),  # contraction written without apostrophe
        ("Dont", "don't"),  # lowercased first
        ("Im", "im"),  # the map's capitalised keys can never match
        ("two", "2"),
        ("none", "0"),
        ("one two three", "1 2 3"),
        ("a dog", "dog"),
        ("The Dog", "dog"),
        ("an apple", "apple"),
        ("yes.", "yes"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("1.5.", "1.5"),  # the final one goes
        ("mr. smith", "mr smith"),
        ("10,000", "10000"),  # comma between digits: marks are deleted, not spaced
        ("1,000 (approx)", "1000 approx"),  # ... and that holds for every mark of the text
        ("red, white", "red white"),  # a mark touching a space is deleted
        ("red,white", "red white"),  # otherwise it becomes a space
        ("t-shirt", "t shirt"),
        ("what's up?", "what's up"),  # apostrophes are kept
        ("  yes\n", "yes"),
        ("left\tone", "left 1"),
        ("." * 40, "." * 8),  # the official passes re.UNICODE (32) as the count of periods removed
    ],
)
def test_normalize_answer_golden(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_leave_one_out_counts() -> None:
    # c of 10 match: (c * min(1, (c-1)/3) + (10-c) * min(1, c/3)) / 10
    assert question_accuracy("dog", gts(*["dog"] * 1, *["cat"] * 9)) == pytest.approx(0.3)
    assert question_accuracy("dog", gts(*["dog"] * 2, *["cat"] * 8)) == pytest.approx(0.6)
    assert question_accuracy("dog", gts(*["dog"] * 3, *["cat"] * 7)) == pytest.approx(0.9)
    assert question_accuracy("dog", gts(*["dog"] * 4, *["cat"] * 6)) == 1.0
    assert question_accuracy("cow", gts(*["dog"] * 4, *["cat"] * 6)) == 0.0


def test_processing_applies_when_gt_answers_differ() -> None:
    assert question_accuracy("the dog", gts(*["dog"] * 3, *["cat"] * 7)) == pytest.approx(0.9)
    assert question_accuracy("Yes.", gts(*["yes"] * 9, "no")) == 1.0
    assert question_accuracy("two", gts(*["2"] * 5, *["two"] * 5)) == 1.0  # gt normalised too


def test_processing_skipped_when_gt_answers_identical() -> None:
    ten_yes = gts(*["yes"] * 10)
    assert question_accuracy("yes", ten_yes) == 1.0
    assert question_accuracy(" yes\n", ten_yes) == 1.0  # whitespace is always cleaned
    assert question_accuracy("yes.", ten_yes) == 0.0  # but not punctuation
    assert question_accuracy("Yes", ten_yes) == 0.0  # nor case
    assert question_accuracy("2", gts(*["two"] * 10)) == 0.0  # nor number words
    # identical only after whitespace cleaning still counts as identical
    assert question_accuracy("yes.", gts(*["yes"] * 9, "yes\t")) == 0.0


def test_identical_answer_dicts_are_held_out_together() -> None:
    # The official code removes every dict equal to the held-out one: with two equal dicts
    # (same id), holding one out removes both. 3 "dog" of which two equal dicts:
    answers = gts(*["dog"] * 3, *["cat"] * 7)
    answers[1] = dict(answers[0])
    # held out a duplicated dog: 1 other dog -> 1/3 (twice); the single dog: 2 others -> 2/3;
    # each of 7 cats: 3 dogs -> 1.  (2/3 + 2/3 + 7) / 10
    assert question_accuracy("dog", answers) == pytest.approx((2 / 3 + 2 / 3 + 7) / 10)


def test_answer_scores_are_official_targets() -> None:
    assert answer_scores(["yes"] * 3 + ["no"] * 7) == pytest.approx({"yes": 0.9, "no": 1.0})
    scores = answer_scores(["Two", "2", "two", "3"])
    assert list(scores) == ["2", "3"]
    assert scores == pytest.approx({"2": 0.75, "3": 0.25})


def _dataset(entries: list[tuple[int, str, str, list[str]]]) -> tuple[dict, dict]:
    questions = {"questions": [{"question_id": q, "image_id": 1, "question": "?"} for q, *_ in entries]}
    annotations = {
        "annotations": [
            {"question_id": q, "image_id": 1, "question_type": qt, "answer_type": at, "answers": gts(*a)}
            for q, qt, at, a in entries
        ]
    }
    return questions, annotations


def test_evaluate_vqa_rounding_and_groups() -> None:
    questions, annotations = _dataset(
        [
            (1, "how many", "number", ["2"] * 10),  # answered "2": 1.0
            (2, "how many", "number", ["3"] * 3 + ["4"] * 7),  # answered "three": 0.9
            (3, "how many", "number", ["5"] * 1 + ["6"] * 9),  # answered "5": 0.3
            (4, "is the", "yes/no", ["yes", "no", "maybe"]),  # three answers, "yes": (0+1/3+1/3)/3
        ]
    )
    results = [
        {"question_id": 1, "answer": "2"},
        {"question_id": 2, "answer": "three"},
        {"question_id": 3, "answer": "5"},
        {"question_id": 4, "answer": "Yes"},
    ]
    scores = evaluate_vqa(questions, annotations, results)
    assert scores["per_question"] == {"1": 100.0, "2": 90.0, "3": 30.0, "4": 22.22}
    assert scores["accuracy"]["perQuestionType"] == {"how many": 73.33, "is the": 22.22}  # 220/3
    assert scores["accuracy"]["perAnswerType"] == {"number": 73.33, "yes/no": 22.22}
    assert scores["accuracy"]["overall"] == 60.56  # 100 * (2.2 + 2/9) / 4 = 60.5555...


def test_exact_tie_rounds_half_away_from_zero_as_the_python2_official_code() -> None:
    # 1 right of 32 is exactly 3.125: the official (Python 2) round gives 3.13; Python 3's would give 3.12.
    questions, annotations = _dataset([(q, "what", "other", ["x"] * 10) for q in range(32)])
    results = [{"question_id": q, "answer": "x" if q == 0 else "y"} for q in range(32)]
    assert evaluate_vqa(questions, annotations, results)["accuracy"]["overall"] == 3.13


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    questions, annotations = _dataset(
        [
            (10, "what color", "other", ["red"] * 6 + ["dark red"] * 4),
            (11, "is there", "yes/no", ["yes"] * 10),
        ]
    )
    paths = {name: tmp_path / f"{name}.json" for name in ("questions", "annotations", "results")}
    paths["questions"].write_text(json.dumps(questions))
    paths["annotations"].write_text(json.dumps(annotations))
    paths["results"].write_text(
        json.dumps([{"question_id": 11, "answer": "no"}, {"question_id": 10, "answer": "Dark red."}])
    )
    return paths


def test_load_and_evaluate_files(files: dict[str, Path]) -> None:
    scores = load_and_evaluate(files["questions"], files["annotations"], files["results"])
    assert scores == {
        "accuracy": {
            "overall": 50.0,
            "perQuestionType": {"what color": 100.0, "is there": 0.0},
            "perAnswerType": {"other": 100.0, "yes/no": 0.0},
        },
        "per_question": {"10": 100.0, "11": 0.0},
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"question_id": 10, "answer": "red"', "line 1 column 37: malformed JSON"),
        (
            '{"question_id": 10, "answer": "red"}',
            "results must be a JSON list, got dict; fix: write a JSON list",
        ),
        (
            '[{"question_id": 10, "answer": "red"}, {"question_id": 11}]',
            "results[1] (question_id 11): not an object with 'question_id' and 'answer'",
        ),
        (
            '[{"question_id": "10", "answer": "red"}, {"question_id": 11, "answer": "no"}]',
            "results[0] (question_id '10'): 'question_id' is not an integer",
        ),
        (
            '[{"question_id": 10, "answer": 2}, {"question_id": 11, "answer": "no"}]',
            "results[0] (question_id 10): 'answer' is int, not a string",
        ),
        (
            '[{"question_id": 10, "answer": "red"}]',
            "question_id 11: no answer for 1 of 2 questions; fix: answer every question",
        ),
        (
            '[{"question_id": 10, "answer": "red"}, {"question_id": 12, "answer": "no"}]',
            "results[1] (question_id 12): question_id not in the annotated questions",
        ),
        (
            '[{"question_id": 10, "answer": "red"}, {"question_id": 10, "answer": "no"}]',
            "results[1] (question_id 10): duplicate question_id, first at results[0]; fix: keep one answer",
        ),
    ],
)
def test_bad_results_name_file_record_and_fix(files: dict[str, Path], content: str, message: str) -> None:
    files["results"].write_text(content)
    with pytest.raises(DataError) as err:
        load_and_evaluate(files["questions"], files["annotations"], files["results"])
    assert str(err.value).startswith(f"{files['results']}: ")
    assert message in str(err.value)


def test_bad_annotations_and_questions(files: dict[str, Path]) -> None:
    annotations = json.loads(files["annotations"].read_text())
    annotations["annotations"][1]["answers"] = []
    files["annotations"].write_text(json.dumps(annotations))
    with pytest.raises(DataError, match=r"annotations\[1\] \(question_id 11\): 'answers' is not a non-empty list"):
        load_and_evaluate(files["questions"], files["annotations"], files["results"])

    files["questions"].write_text(json.dumps({"questions": [{"question_id": 10}]}))
    annotations["annotations"][1]["answers"] = gts("yes")
    files["annotations"].write_text(json.dumps(annotations))
    with pytest.raises(DataError, match="question_id 11: 1 annotated question.s. not in the questions file"):
        load_and_evaluate(files["questions"], files["annotations"], files["results"])


def test_missing_file_is_a_data_error(files: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="results file not found"):
        load_and_evaluate(files["questions"], files["annotations"], files["results"].with_name("nope.json"))
