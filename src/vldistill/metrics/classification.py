"""SNLI-VE accuracy: the fraction of image-hypothesis pairs whose label is predicted right.

Predictions file (see :mod:`vldistill.metrics.files`): ``{"id": "<pairID>", "prediction": "<label>"}``
with the label one of ``entailment``, ``neutral``, ``contradiction``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vldistill.data.records import VE_LABELS
from vldistill.metrics.files import read_predictions, require_same_ids


def snli_ve_accuracy(gold: Mapping[str, str], pred: Mapping[str, str]) -> dict[str, float]:
    """Accuracy overall and per gold label, in percent (not rounded).

    ``gold`` and ``pred`` map pairID -> label and must have the same ids. Returns
    ``{"accuracy": x, "accuracy_entailment": x, "accuracy_neutral": x, "accuracy_contradiction": x}``;
    a label absent from the gold set is left out.
    """
    require_same_ids(gold, pred)
    scores = {"accuracy": 100 * sum(pred[key] == label for key, label in gold.items()) / len(gold)}
    for label in VE_LABELS:
        keys = [key for key, gold_label in gold.items() if gold_label == label]
        if keys:
            scores[f"accuracy_{label}"] = 100 * sum(pred[key] == label for key in keys) / len(keys)
    return scores


def _parse_ve_label(value: object) -> str:
    if value not in VE_LABELS:
        raise ValueError("not an SNLI-VE label")
    return str(value)


def load_snli_ve_predictions(path: str | Path) -> dict[str, str]:
    """Read an SNLI-VE predictions file into pairID -> label."""
    return read_predictions(path, _parse_ve_label, "one of " + ", ".join(repr(label) for label in VE_LABELS))
