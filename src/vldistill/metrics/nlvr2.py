"""NLVR2 accuracy and consistency, as the official ``nlvr2/eval/metrics.py`` (lil-lab/nlvr) defines them.

An identifier is ``<split>-<set id>-<pair id>-<sentence id>`` (e.g. ``dev-850-0-0``). A statement is
paired with several image pairs; the official script groups examples by the identifier with its third
field (the pair id) blanked, and *consistency* is the fraction of those statements whose predictions
are right on all of their image pairs. Labels compare case-insensitively (``"true"`` == ``"True"``).

Predictions file (see :mod:`vldistill.metrics.files`): ``{"id": "<identifier>", "prediction": "True"}``
(``"True"``/``"False"`` in any case, or a JSON boolean).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vldistill.metrics.files import read_predictions, require_same_ids


def statement_key(identifier: str) -> str:
    """The official grouping key: the identifier with its pair-id field blanked (``dev-850--0``)."""
    fields = identifier.split("-")
    if len(fields) < 3:
        raise ValueError(f"NLVR2 identifier {identifier!r} is not '<split>-<set>-<pair>-<sentence>'")
    fields[2] = ""
    return "-".join(fields)


def nlvr2_scores(gold: Mapping[str, bool], pred: Mapping[str, bool]) -> dict[str, float]:
    """``{"accuracy": x, "consistency": x}`` in percent (not rounded).

    ``gold`` and ``pred`` map identifier -> label and have the same ids.
    """
    require_same_ids(gold, pred)
    consistent: dict[str, bool] = {}
    for identifier, label in gold.items():
        key = statement_key(identifier)
        consistent[key] = consistent.get(key, True) and pred[identifier] == label
    correct = sum(pred[identifier] == label for identifier, label in gold.items())
    return {
        "accuracy": 100 * correct / len(gold),
        "consistency": 100 * sum(consistent.values()) / len(consistent),
    }


def _parse_nlvr2_label(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("not 'True' or 'False'")


def load_nlvr2_predictions(path: str | Path) -> dict[str, bool]:
    """Read an NLVR2 predictions file into identifier -> label."""
    return read_predictions(path, _parse_nlvr2_label, "'True' or 'False'")
