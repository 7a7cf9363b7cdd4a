"""Predictions files (JSON Lines or JSON list) and the coverage checks, with their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vldistill.errors import DataError
from vldistill.metrics.classification import load_snli_ve_predictions
from vldistill.metrics.files import check_coverage, gold_labels
from vldistill.metrics.nlvr2 import load_nlvr2_predictions
from vldistill.metrics.vcr import load_vcr_predictions


def test_jsonl_and_json_list_read_the_same(tmp_path: Path) -> None:
    records = [{"id": "dev-1-0-0", "prediction": "True"}, {"id": "dev-1-1-0", "prediction": False}]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    listed = tmp_path / "p.json"
    listed.write_text(json.dumps(records, indent=1))
    expected = {"dev-1-0-0": True, "dev-1-1-0": False}
    assert load_nlvr2_predictions(jsonl) == expected
    assert load_nlvr2_predictions(listed) == expected


def test_vcr_and_snli_ve_predictions(tmp_path: Path) -> None:
    path = tmp_path / "vcr.jsonl"
    path.write_text(json.dumps({"id": "val-0", "prediction": {"answer": 3, "rationale": 0}}))
    assert load_vcr_predictions(path) == {"val-0": (3, 0)}
    path = tmp_path / "ve.jsonl"
    path.write_text(json.dumps({"id": "12#0r1n", "prediction": "neutral"}))
    assert load_snli_ve_predictions(path) == {"12#0r1n": "neutral"}


@pytest.mark.parametrize(
    ("lines", "loader", "message"),
    [
        (['{"id": "a", "prediction": "True"}', "{oops"], load_nlvr2_predictions, "line 2: malformed JSON"),
        (['{"id": "a"}'], load_nlvr2_predictions, "line 1: not an object with 'id' and 'prediction'"),
        (
            ['{"id": 3, "prediction": "True"}'],
            load_nlvr2_predictions,
            "line 1: id 3 is not a non-empty string",
        ),
        (
            ['{"id": "a", "prediction": "yes"}'],
            load_nlvr2_predictions,
            "line 1 (id a): bad prediction 'yes' (not 'True' or 'False'); fix: write 'True' or 'False'",
        ),
        (
            ['{"id": "a", "prediction": "True"}', '{"id": "a", "prediction": "False"}'],
            load_nlvr2_predictions,
            "line 2 (id a): duplicate id, already at line 1",
        ),
        (
            ['{"id": "a", "prediction": {"answer": 4, "rationale": 0}}'],
            load_vcr_predictions,
            "bad prediction {'answer': 4, 'rationale': 0} (not a choice index 0..3)",
        ),
        (['{"id": "a", "prediction": "entail"}'], load_snli_ve_predictions, "(not an SNLI-VE label)"),
    ],
)
def test_bad_predictions(tmp_path: Path, lines: list[str], loader, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        loader(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_coverage_errors() -> None:
    with pytest.raises(DataError, match=r"^p.jsonl: id z: 1 prediction\(s\) for ids not in the gold split"):
        check_coverage({"a": 1, "z": 1}, ["a", "b"], "p.jsonl")
    with pytest.raises(DataError, match=r"^p.jsonl: id b: no prediction for 2 of 3 gold examples"):
        check_coverage({"a": 1}, ["a", "b", "c"], "p.jsonl")
    check_coverage({"a": 1, "b": 2}, ["b", "a"], "p.jsonl")


def test_gold_labels_refuse_unlabelled_and_repeated_ids() -> None:
    assert gold_labels([("a", True), ("b", False)], "root (dev)") == {"a": True, "b": False}
    with pytest.raises(DataError, match=r"^root \(test\): id b: no gold label"):
        gold_labels([("a", True), ("b", None)], "root (test)")
    with pytest.raises(DataError, match="id a: duplicate example id"):
        gold_labels([("a", True), ("a", True)], "root (dev)")
