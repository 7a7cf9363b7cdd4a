"""VCR accuracies (Zellers et al., 2019): Q->A, QA->R and Q->AR.

Q->A counts right answers; QA->R right rationales (the rationale is chosen given the gold answer, so it
is scored on its own); Q->AR counts examples with both right, the task's headline figure.

Predictions file (see :mod:`vldistill.metrics.files`):
``{"id": "<annot_id>", "prediction": {"answer": <int>, "rationale": <int>}}``, 0-based choice indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vldistill.metrics.files import read_predictions, require_same_ids

VCR_NUM_CHOICES = 4
"""Every VCR question has four answer and four rationale choices."""


def vcr_accuracy(gold: Mapping[str, tuple[int, int]], pred: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """``{"q2a": x, "qa2r": x, "q2ar": x}`` in percent (not rounded).

    ``gold`` and ``pred`` map annot_id -> ``(answer index, rationale index)`` and have the same ids.
    """
    require_same_ids(gold, pred)
    answer_right = {key: pred[key][0] == answer for key, (answer, _) in gold.items()}
    rationale_right = {key: pred[key][1] == rationale for key, (_, rationale) in gold.items()}
    total = len(gold)
    return {
        "q2a": 100 * sum(answer_right.values()) / total,
        "qa2r": 100 * sum(rationale_right.values()) / total,
        "q2ar": 100 * sum(answer_right[key] and rationale_right[key] for key in gold) / total,
    }


def _choice(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < VCR_NUM_CHOICES:
        raise ValueError(f"not a choice index 0..{VCR_NUM_CHOICES - 1}")
    return value


def _parse_vcr_prediction(value: object) -> tuple[int, int]:
    if not isinstance(value, dict) or "answer" not in value or "rationale" not in value:
        raise ValueError("not an object with 'answer' and 'rationale'")
    return _choice(value["answer"]), _choice(value["rationale"])


def load_vcr_predictions(path: str | Path) -> dict[str, tuple[int, int]]:
    """Read a VCR predictions file into annot_id -> (answer index, rationale index)."""
    return read_predictions(path, _parse_vcr_prediction, '{"answer": <0..3>, "rationale": <0..3>}')
