"""SNLI-VE, VCR and NLVR2 metrics on hand-worked examples."""

from __future__ import annotations

import pytest

from vldistill.metrics.classification import snli_ve_accuracy
from vldistill.metrics.nlvr2 import nlvr2_scores, statement_key
from vldistill.metrics.vcr import vcr_accuracy


def test_snli_ve_accuracy_overall_and_per_label() -> None:
    gold = {"p1": "entailment", "p2": "entailment", "p3": "neutral", "p4": "contradiction", "p5": "neutral"}
    pred = {"p1": "entailment", "p2": "neutral", "p3": "neutral", "p4": "contradiction", "p5": "entailment"}
    assert snli_ve_accuracy(gold, pred) == {
        "accuracy": 60.0,
        "accuracy_entailment": 50.0,
        "accuracy_neutral": 50.0,
        "accuracy_contradiction": 100.0,
    }


def test_snli_ve_leaves_out_absent_labels() -> None:
    assert snli_ve_accuracy({"p1": "neutral"}, {"p1": "entailment"}) == {
        "accuracy": 0.0,
        "accuracy_neutral": 0.0,
    }


def test_vcr_q2a_qa2r_q2ar() -> None:
    gold = {"a": (1, 2), "b": (0, 3), "c": (2, 2), "d": (3, 0)}
    pred = {"a": (1, 2), "b": (0, 1), "c": (1, 2), "d": (2, 1)}  # both / answer / rationale / neither
    assert vcr_accuracy(gold, pred) == {"q2a": 50.0, "qa2r": 50.0, "q2ar": 25.0}


def test_nlvr2_statement_key_blanks_the_pair_id() -> None:
    assert statement_key("dev-850-3-1") == "dev-850--1"
    with pytest.raises(ValueError, match="not '<split>-<set>-<pair>-<sentence>'"):
        statement_key("dev-850")


def test_nlvr2_accuracy_and_consistency() -> None:
    gold = {
        "dev-1-0-0": True,  # statement dev-1--0 over three image pairs
        "dev-1-1-0": False,
        "dev-1-2-0": True,
        "dev-1-0-1": False,  # statement dev-1--1
        "dev-2-0-0": True,  # statement dev-2--0
    }
    pred = dict(gold, **{"dev-1-2-0": False})  # one pair of dev-1--0 wrong
    scores = nlvr2_scores(gold, pred)
    assert scores["accuracy"] == 80.0
    assert scores["consistency"] == pytest.approx(200 / 3)


def test_pure_functions_require_the_same_ids() -> None:
    with pytest.raises(ValueError, match=r"\(1 missing, 1 extra\)"):
        vcr_accuracy({"a": (0, 0)}, {"b": (0, 0)})
    with pytest.raises(ValueError, match="no examples"):
        nlvr2_scores({}, {})
