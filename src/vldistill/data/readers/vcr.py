"""VCR reader: ``<split>.jsonl`` joined with each image's metadata JSON.

Layout (as visualcommonsense.com distributes ``vcr1annots.zip`` and ``vcr1images.zip``)::

    ROOT/<split>.jsonl                    split: train, val, test; one JSON object per line with
                                          annot_id, objects, img_fn, metadata_fn, question,
                                          answer_choices (4), rationale_choices (4), answer_label,
                                          rationale_label (absent on test), movie, img_id, ...
    ROOT/vcr1images/<img_fn>              the image (``<movie folder>/<name>.jpg``)
    ROOT/vcr1images/<metadata_fn>         {boxes: [[x1, y1, x2, y2, score], ...], names, width, height, segms}

A token is a word, or a list of indices into ``objects`` (``[0, 2]`` = "person0 and person2").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vldistill.data.readers.jsonio import (
    Fields,
    SkippedRecords,
    inside_root,
    is_kind,
    iter_jsonl,
    labels_optional,
    load_json,
    parse_jsonl_line,
    require_file,
    skip_or_raise,
)
from vldistill.data.records import VCRObjectBox, VCRRecord, VCRToken
from vldistill.errors import DataError

CHOICES = 4


def annotations_path(root: Path, split: str) -> Path:
    """The JSON Lines file of ``split`` (``train``, ``val``, ``test``)."""
    return root / f"{split}.jsonl"


def _tokens(fields: Fields, value: Any, name: str, n_objects: int) -> tuple[VCRToken, ...]:
    """A non-empty token list whose object references all index into ``objects``."""
    if not isinstance(value, list) or not value:
        raise fields.error(f"'{name}' is not a non-empty list of tokens", "write words and [object indices]")
    tokens: list[VCRToken] = []
    for k, token in enumerate(value):
        if isinstance(token, str):
            tokens.append(token)
            continue
        if not isinstance(token, list) or not token or not all(is_kind(i, int) for i in token):
            raise fields.error(f"{name}[{k}] is neither a word nor a list of object indices", "fix the token")
        bad = [i for i in token if not 0 <= i < n_objects]
        if bad:
            raise fields.error(
                f"{name}[{k}] refers to object {bad[0]}, but the record has {n_objects} objects",
                f"use indices 0..{n_objects - 1} into 'objects'",
            )
        tokens.append(list(token))
    return tuple(tokens)


def _choices(fields: Fields, name: str, n_objects: int) -> tuple[tuple[VCRToken, ...], ...]:
    raw = fields.get(name, list)
    if len(raw) != CHOICES:
        raise fields.error(f"'{name}' has {len(raw)} choices, expected {CHOICES}", f"give {CHOICES} choices")
    return tuple(_tokens(fields, choice, f"{name}[{c}]", n_objects) for c, choice in enumerate(raw))


def _label(fields: Fields, name: str, split: str) -> int | None:
    if not fields.has(name) and labels_optional(split):
        return None
    label = fields.get(name, int)
    if not 0 <= label < CHOICES:
        raise fields.error(f"{name} is {label}", f"use 0..{CHOICES - 1}, the index of the right choice")
    return label


def _metadata(path: Path, objects: tuple[str, ...], record: str) -> tuple[tuple[VCRObjectBox, ...], int, int]:
    """Boxes, width and height from a metadata JSON; its boxes must match the record's objects."""
    try:
        meta = load_json(require_file(path, "VCR metadata file", other_layouts=False))
    except DataError as err:
        raise DataError(err.file, record, err.problem, err.fix) from None
    if not isinstance(meta, dict):
        raise DataError(path, record, "metadata is not a JSON object", "write {boxes, names, width, height}")
    fields = Fields(meta, path, record)
    width, height = fields.get("width", int), fields.get("height", int)
    boxes, names = fields.get("boxes", list), fields.get("names", list)
    if len(boxes) != len(objects) or len(names) != len(objects):
        raise fields.error(
            f"has {len(boxes)} boxes and {len(names)} names but the record has {len(objects)} objects",
            "use the metadata file of this record's image",
        )
    result = []
    for k, (box, name) in enumerate(zip(boxes, names, strict=True)):
        if not (isinstance(box, list) and len(box) == 5 and all(is_kind(v, float) and math.isfinite(v) for v in box)):
            raise fields.error(f"boxes[{k}] is not [x1, y1, x2, y2, score]", "write five numbers per box")
        if name != objects[k]:
            raise fields.error(f"names[{k}] is {name!r} but objects[{k}] is {objects[k]!r}", "use matching files")
        x1, y1, x2, y2, score = (float(v) for v in box)
        if x2 < x1 or y2 < y1:
            raise fields.error(f"boxes[{k}] has x2 < x1 or y2 < y1", "write corners as x1, y1, x2, y2")
        result.append(VCRObjectBox(name, x1, y1, x2, y2, score))
    return tuple(result), width, height


def _record(fields: Fields, root: Path, split: str, cache: dict[Any, Any]) -> VCRRecord:
    annot_id = fields.string_or_int("annot_id")
    fields.record = f"{fields.record} (annot_id {annot_id})"
    objects = fields.get("objects", list)
    if not all(isinstance(name, str) and name for name in objects):
        raise fields.error("'objects' is not a list of class names", "write one non-empty string per object")
    img_fn, metadata_fn = fields.text("img_fn"), fields.text("metadata_fn")
    images = root / "vcr1images"
    image = inside_root(images, img_fn, fields, "img_fn")
    metadata = inside_root(images, metadata_fn, fields, "metadata_fn")
    n = len(objects)
    question = _tokens(fields, fields.get("question", list), "question", n)
    answers = _choices(fields, "answer_choices", n)
    rationales = _choices(fields, "rationale_choices", n)
    answer_label, rationale_label = (
        _label(fields, "answer_label", split),
        _label(fields, "rationale_label", split),
    )
    # Several questions share one image: parse its metadata once; a bad file stays bad for each record.
    key = (metadata, tuple(objects))
    where = f"metadata of {fields.file.name} {fields.record}"
    if key not in cache:
        try:
            cache[key] = _metadata(metadata, tuple(objects), where)
        except DataError as err:
            cache[key] = err
    if isinstance(cache[key], DataError):
        err = cache[key]
        raise DataError(err.file, where, err.problem, err.fix)
    boxes, width, height = cache[key]
    return VCRRecord(
        annot_id=annot_id,
        img_fn=img_fn,
        metadata_fn=metadata_fn,
        image_path=image,
        objects=tuple(objects),
        question=question,
        answer_choices=answers,
        rationale_choices=rationales,
        answer_label=answer_label,
        rationale_label=rationale_label,
        boxes=boxes,
        width=width,
        height=height,
    )


def read_vcr(
    root: Path, split: str, *, skip_bad: bool = False, report: SkippedRecords | None = None
) -> list[VCRRecord]:
    """Read a VCR split (``train``, ``val``, ``test``) with its boxes; see the module docstring.

    ``skip_bad`` skips defective lines instead of raising; the reasons go into ``report``.
    """
    root = Path(root).absolute()
    path = require_file(annotations_path(root, split), f"VCR file of split '{split}'", "*.jsonl", other_layouts=False)
    records: list[VCRRecord] = []
    cache: dict[Any, Any] = {}
    for number, raw in iter_jsonl(path):
        try:
            fields = Fields(parse_jsonl_line(path, number, raw), path, f"line {number}")
            records.append(_record(fields, root, split, cache))
        except DataError as err:
            skip_or_raise(err, skip_bad, report)
    return records
