"""Reading metric inputs: JSON files and predictions files, every defect a one-line ``DataError``.

The predictions file of SNLI-VE, VCR and NLVR2 (tasks without an official results format) is either
JSON Lines, one object per line, or a JSON list of the same objects::

    {"id": "<example id>", "prediction": <task-specific value>}

``id`` is the official example id (SNLI-VE ``pairID``, VCR ``annot_id``, NLVR2 ``identifier``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from vldistill.errors import DataError

T = TypeVar("T")


def read_json(path: str | Path, what: str) -> Any:
    """Parse one JSON file; a missing, non-UTF-8 or malformed file raises a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, f"{what} file not found", f"pass the path of the {what} file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(path, f"byte {err.start}", "not UTF-8 text", "save the file as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(
            path,
            f"line {err.lineno} column {err.colno}",
            f"malformed JSON ({err.msg})",
            "fix the JSON syntax",
        ) from None


def _prediction_objects(path: Path) -> list[tuple[str, Any]]:
    """The file's objects, each with its location ("line 3" or "record [2]"), JSON list or JSON Lines."""
    if not path.is_file():
        raise DataError(path, None, "predictions file not found", "pass the path of the predictions file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, f"byte {err.start}", "not UTF-8 text", "save the file as UTF-8") from None
    if text.lstrip().startswith("["):
        items = read_json(path, "predictions")
        return [(f"record [{index}]", item) for index, item in enumerate(items)]
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            objects.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(
                path, f"line {number}", f"malformed JSON ({err.msg})", "write one JSON object per line"
            ) from None
    return objects


def read_predictions(path: str | Path, parse: Callable[[Any], T], expected: str) -> dict[str, T]:
    """Read a predictions file into ``{id: parse(prediction)}``.

    ``parse`` turns the raw JSON value into the task's prediction and raises ``ValueError`` when it is
    not one; ``expected`` describes a valid value for the error message (e.g. ``"'True' or 'False'"``).
    Records that are not ``{"id": ..., "prediction": ...}`` objects and duplicate ids raise ``DataError``.
    """
    path = Path(path)
    predictions: dict[str, T] = {}
    seen_at: dict[str, str] = {}
    fix_shape = 'write {"id": "<example id>", "prediction": ...}'
    for where, item in _prediction_objects(path):
        if not isinstance(item, dict) or "id" not in item or "prediction" not in item:
            raise DataError(path, where, "not an object with 'id' and 'prediction'", fix_shape)
        example_id = item["id"]
        if not isinstance(example_id, str) or not example_id:
            raise DataError(path, where, f"id {example_id!r} is not a non-empty string", fix_shape)
        record = f"{where} (id {example_id})"
        if example_id in seen_at:
            raise DataError(
                path, record, f"duplicate id, already at {seen_at[example_id]}", "keep one prediction per id"
            )
        try:
            predictions[example_id] = parse(item["prediction"])
        except ValueError as err:
            problem = f"bad prediction {item['prediction']!r} ({err})"
            raise DataError(path, record, problem, f"write {expected}") from None
        seen_at[example_id] = where
    return predictions


def gold_labels(pairs: Iterable[tuple[str, T | None]], source: str | Path) -> dict[str, T]:
    """``{id: label}`` from a reader's ``(id, label)`` pairs; a missing label or a repeated id raises.

    ``source`` names the dataset (root and split) in errors: a split without labels (hidden test) cannot
    be scored.
    """
    gold: dict[str, T] = {}
    for example_id, label in pairs:
        if label is None:
            raise DataError(
                source, f"id {example_id}", "no gold label (a hidden test split?)", "score a labelled split"
            )
        if example_id in gold:
            raise DataError(source, f"id {example_id}", "duplicate example id", "keep one record per id")
        gold[example_id] = label
    return gold


def check_coverage(
    predictions: Mapping[str, object], gold_ids: Iterable[str], path: str | Path, *, subset: bool = False
) -> set[str]:
    """Require exactly one prediction per gold example: no missing and no unknown ids; returns the ids to score.

    ``subset``: predictions of part of the split are allowed (``vldistill eval`` with ``data.max_eval``);
    the returned ids are then those predicted, and the score is not the split's official score.

    Raises:
        DataError: a prediction for an id not in the split; a gold example without prediction (unless
            ``subset``); no prediction at all.
    """
    gold = set(gold_ids)
    unknown = [example_id for example_id in predictions if example_id not in gold]
    if unknown:
        raise DataError(
            path,
            f"id {unknown[0]}",
            f"{len(unknown)} prediction(s) for ids not in the gold split",
            "predict the examples of the split being scored (check --split)",
        )
    missing = sorted(gold.difference(predictions))
    if subset:
        if not predictions:
            raise DataError(path, None, "no predictions", "predict at least one example of the split")
        return set(predictions)
    if missing:
        raise DataError(
            path,
            f"id {missing[0]}",
            f"no prediction for {len(missing)} of {len(gold)} gold examples",
            "predict every example of the split, or add --subset to score only the predicted ones",
        )
    return gold


def require_same_ids(gold: Mapping[str, object], pred: Mapping[str, object]) -> None:
    """Guard of the pure metric functions: predictions for exactly the gold ids, at least one.

    Raises ``ValueError`` (a programming error: loaders check files with :func:`check_coverage`).
    """
    if gold.keys() != pred.keys():
        missing, extra = len(gold.keys() - pred.keys()), len(pred.keys() - gold.keys())
        raise ValueError(f"predictions must cover the gold ids exactly ({missing} missing, {extra} extra)")
    if not gold:
        raise ValueError("no examples to score")
