"""``vldistill score``: official-format files in, scores out (JSON and the printed figure)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vldistill.cli import app, main

runner = CliRunner()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def vqa_files(tmp_path: Path) -> list[str]:
    questions = {"questions": [{"question_id": q, "image_id": 7, "question": "?"} for q in (1, 2)]}
    answers = [["two"] * 5 + ["2"] * 5, ["yes"] * 10]
    annotations = {
        "annotations": [
            {
                "question_id": q,
                "image_id": 7,
                "question_type": "how many" if q == 1 else "is the",
                "answer_type": "number" if q == 1 else "yes/no",
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(gt)],
            }
            for q, gt in zip((1, 2), answers, strict=True)
        ]
    }
    results = [{"question_id": 1, "answer": "Two"}, {"question_id": 2, "answer": "no"}]
    for name, content in (("q", questions), ("a", annotations), ("r", results)):
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    return [
        "score", "vqa", "--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json"),
        "--results", str(tmp_path / "r.json"),
    ]  # fmt: skip


def test_score_vqa_writes_official_dict(vqa_files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out" / "vqa.json"
    result = runner.invoke(app, [*vqa_files, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "VQA accuracy: 50.00 (number 100.00, yes/no 0.00)" in result.output
    assert json.loads(out.read_text()) == {
        "accuracy": {
            "overall": 50.0,
            "perQuestionType": {"how many": 100.0, "is the": 0.0},
            "perAnswerType": {"number": 100.0, "yes/no": 0.0},
        },
        "per_question": {"1": 100.0, "2": 0.0},
    }


def test_score_vqa_bad_results_exit_2_with_one_line(
    vqa_files: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r.json").write_text(json.dumps([{"question_id": 1, "answer": "2"}]))
    monkeypatch.setattr(sys, "argv", ["vldistill", *vqa_files])
    with pytest.raises(SystemExit) as done:
        main()  # the console script's entry point, in process (a subprocess re-imports torch)
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'r.json'}: question_id 2: no answer for 1 of 2 questions; "
        "fix: answer every question of the split (the official evaluation requires all of them), or add "
        "--subset to score only the answered ones\n"
    )


def test_score_vqa_subset_scores_only_the_answered_questions(vqa_files: list[str], tmp_path: Path) -> None:
    """Predictions of part of a split (`vldistill eval` with data.max_eval): scored with --subset, and said so."""
    (tmp_path / "r.json").write_text(json.dumps([{"question_id": 1, "answer": "2"}]))
    out = tmp_path / "vqa.json"
    result = runner.invoke(app, [*vqa_files, "--subset", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "VQA accuracy: 100.00 (number 100.00) on 1 of 2 questions (--subset)" in result.output
    scores = json.loads(out.read_text())
    assert scores["per_question"] == {"1": 100.0} and scores["subset"] == {"scored": 1, "annotated": 2}


def test_score_snli_ve(tmp_path: Path) -> None:
    labels = {"1#0r1e": "entailment", "1#0r1n": "neutral", "2#0r1c": "contradiction", "2#0r1e": "entailment"}
    write_jsonl(
        tmp_path / "ve" / "snli_ve_dev.jsonl",
        [
            {"pairID": pair, "Flickr30K_ID": pair[0], "gold_label": label, "sentence1": "c", "sentence2": "h"}
            for pair, label in labels.items()
        ],
    )
    pred = dict(labels, **{"1#0r1n": "entailment"})
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": k, "prediction": v} for k, v in pred.items()])
    out = tmp_path / "ve.json"
    args = ["score", "snli_ve", str(tmp_path / "ve"), "--split", "dev", "--predictions", str(predictions)]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "SNLI-VE dev accuracy: 75.00 (4 pairs)" in result.output
    assert json.loads(out.read_text()) == {
        "accuracy": 75.0,
        "accuracy_entailment": 100.0,
        "accuracy_neutral": 0.0,
        "accuracy_contradiction": 100.0,
    }


def _vcr_row(annot_id: str, answer: int, rationale: int) -> dict:
    choice = ["because", [0], "is", "here"]
    return {
        "annot_id": annot_id,
        "objects": ["person"],
        "img_fn": "movie/a.jpg",
        "metadata_fn": "movie/a.json",
        "question": ["why", "is", [0], "here", "?"],
        "answer_choices": [choice] * 4,
        "rationale_choices": [choice] * 4,
        "answer_label": answer,
        "rationale_label": rationale,
    }


def test_score_vcr(tmp_path: Path) -> None:
    root = tmp_path / "vcr"
    write_jsonl(root / "val.jsonl", [_vcr_row("val-0", 1, 2), _vcr_row("val-1", 0, 3)])
    meta = {"boxes": [[1.0, 2.0, 10.0, 12.0, 0.9]], "names": ["person"], "width": 32, "height": 32}
    (root / "vcr1images" / "movie").mkdir(parents=True)
    (root / "vcr1images" / "movie" / "a.json").write_text(json.dumps(meta))
    predictions = tmp_path / "p.json"  # the JSON-list form
    predictions.write_text(
        json.dumps(
            [
                {"id": "val-0", "prediction": {"answer": 1, "rationale": 2}},
                {"id": "val-1", "prediction": {"answer": 0, "rationale": 0}},
            ]
        )
    )
    result = runner.invoke(app, ["score", "vcr", str(root), "--predictions", str(predictions)])
    assert result.exit_code == 0, result.output
    assert "VCR val: Q->A 100.00, QA->R 50.00, Q->AR 50.00" in result.output


def test_score_nlvr2(tmp_path: Path) -> None:
    gold = {"dev-1-0-0": "True", "dev-1-1-0": "False", "dev-1-0-1": "True", "dev-2-0-0": "False"}
    rows = [{"identifier": k, "sentence": "s", "label": v, "left_url": "", "right_url": ""} for k, v in gold.items()]
    write_jsonl(tmp_path / "nlvr2" / "dev.json", rows)
    pred = dict(gold, **{"dev-1-1-0": "True"})
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": k, "prediction": v} for k, v in pred.items()])
    out = tmp_path / "nlvr2.json"
    args = ["score", "nlvr2", str(tmp_path / "nlvr2"), "--predictions", str(predictions), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "NLVR2 dev: accuracy 75.00, consistency 66.67" in result.output
    assert json.loads(out.read_text()) == {"accuracy": 75.0, "consistency": pytest.approx(200 / 3)}


def test_score_nlvr2_missing_prediction(tmp_path: Path) -> None:
    rows = [{"identifier": f"dev-1-{p}-0", "sentence": "s", "label": "True"} for p in range(3)]
    write_jsonl(tmp_path / "nlvr2" / "dev.json", rows)
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"id": "dev-1-0-0", "prediction": "True"}])
    result = runner.invoke(app, ["score", "nlvr2", str(tmp_path / "nlvr2"), "--predictions", str(predictions)])
    assert str(result.exception) == (
        f"{predictions}: id dev-1-1-0: no prediction for 2 of 3 gold examples; fix: predict every example of the "
        "split, or add --subset to score only the predicted ones"
    )
    result = runner.invoke(
        app, ["score", "nlvr2", str(tmp_path / "nlvr2"), "--predictions", str(predictions), "--subset"]
    )
    assert result.exit_code == 0, result.output
    assert "NLVR2 dev: accuracy 100.00, consistency 100.00 on 1 of 3 examples (--subset)" in result.output
