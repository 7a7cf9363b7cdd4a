"""VQA v2 reader: the questions file of a split joined with its annotations file.

Layout (as visualqa.org distributes it)::

    ROOT/v2_OpenEnded_mscoco_<split>_questions.json
        {info, task_type, data_type, data_subtype, license,
         questions: [{image_id, question, question_id}]}
    ROOT/v2_mscoco_<split>_annotations.json
        {info, license, data_subtype, data_type,
         annotations: [{question_id, image_id, question_type, answer_type, multiple_choice_answer,
                        answers: [{answer, answer_confidence, answer_id}] x 10}]}
    ROOT/<split>/COCO_<split>_<image_id:012d>.jpg

The annotations file is optional on test splits only. ``test-dev2015`` is a subset of ``test2015`` and
uses its images (``ROOT/test2015/COCO_test2015_*.jpg``), as COCO ships them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vldistill.data.readers.jsonio import (
    Fields,
    SkippedRecords,
    labels_optional,
    load_json,
    require_file,
    skip_or_raise,
)
from vldistill.data.records import VQAAnswer, VQARecord
from vldistill.errors import DataError

ANSWERS_PER_QUESTION = 10
CONFIDENCES = ("yes", "maybe", "no")


def questions_path(root: Path, split: str) -> Path:
    """The questions file of ``split`` (e.g. ``train2014``, ``val2014``, ``test2015``)."""
    return root / f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotations_path(root: Path, split: str) -> Path:
    """The annotations file of ``split`` (absent on test splits)."""
    return root / f"v2_mscoco_{split}_annotations.json"


def image_folder(split: str) -> str:
    """The COCO image folder (and file-name prefix) of ``split``: test-dev2015 is part of test2015."""
    return "test2015" if split == "test-dev2015" else split


def image_path(images: Path, image_id: int) -> Path:
    """The COCO image of ``image_id`` in a split's image folder ``ROOT/<image_folder(split)>``."""
    return images / f"COCO_{images.name}_{image_id:012d}.jpg"


def _entries(path: Path, key: str, split: str) -> list[Any]:
    """The list under ``key`` of a VQA JSON file, after checking the file is for ``split``."""
    top = load_json(path)
    if not isinstance(top, dict):
        raise DataError(path, None, "top level is not a JSON object", f"the file must be an object with '{key}'")
    fields = Fields(top, path, None)
    entries = fields.get(key, list)
    subtype = top.get("data_subtype")
    if isinstance(subtype, str) and subtype != split:
        raise DataError(
            path,
            None,
            f"data_subtype is '{subtype}' but the file name says split '{split}'",
            "use the right file",
        )
    return entries


def annotator_answers(fields: Fields) -> tuple[VQAAnswer, ...]:
    """The ten ``{answer, answer_confidence, answer_id}`` objects of the record's ``answers`` field."""
    raw = fields.get("answers", list)
    if len(raw) != ANSWERS_PER_QUESTION:
        raise fields.error(f"has {len(raw)} answers, expected {ANSWERS_PER_QUESTION}", "give the ten annotator answers")
    answers = []
    for k, item in enumerate(raw):
        # Fast path for a well-formed answer; the slow path below names the defect.
        if (
            isinstance(item, dict)
            and type(item.get("answer")) is str
            and item.get("answer_confidence") in CONFIDENCES
            and type(item.get("answer_id")) is int
        ):
            answers.append(VQAAnswer(item["answer"], item["answer_confidence"], item["answer_id"]))
            continue
        if not isinstance(item, dict):
            raise fields.error(f"answers[{k}] is not an object", "write {answer, answer_confidence, answer_id}")
        sub = Fields(item, fields.file, f"{fields.record} answers[{k}]")
        sub.get("answer", str)  # each get raises on a missing or mistyped field
        sub.get("answer_id", int)
        confidence = sub.get("answer_confidence", str)
        raise sub.error(f"answer_confidence is {confidence!r}", f"use one of {', '.join(CONFIDENCES)}")
    return tuple(answers)


def _record(question: Fields, annotation: Fields | None, images: Path) -> VQARecord:
    """One record; ``images`` is the split's COCO image folder."""
    question_id = question.get("question_id", int)
    image_id = question.get("image_id", int)
    if image_id < 0:
        raise question.error(f"image_id is negative ({image_id})", "use the COCO image id")
    text = question.text("question")
    if annotation is None:
        return VQARecord(question_id, image_id, text, image_path(images, image_id))
    if annotation.get("image_id", int) != image_id:
        raise annotation.error(
            f"image_id {annotation.obj['image_id']} differs from the question's ({image_id})",
            "use annotations and questions of the same release",
        )
    return VQARecord(
        question_id=question_id,
        image_id=image_id,
        question=text,
        image_path=image_path(images, image_id),
        question_type=annotation.get("question_type", str),
        answer_type=annotation.text("answer_type"),
        multiple_choice_answer=annotation.get("multiple_choice_answer", str),
        answers=annotator_answers(annotation),
    )


def _index_annotations(path: Path, split: str, skip_bad: bool, report: SkippedRecords | None) -> dict[int, Fields]:
    """Annotations by question_id; a duplicate or id-less annotation is a record-level defect."""
    index: dict[int, Fields] = {}
    for i, item in enumerate(_entries(path, "annotations", split)):
        fields = Fields(item if isinstance(item, dict) else {}, path, f"annotations[{i}]")
        try:
            if not isinstance(item, dict):
                raise fields.error("annotation is not a JSON object", "write one object per annotation")
            question_id = fields.get("question_id", int)
            fields.record = f"annotations[{i}] (question_id {question_id})"
            if question_id in index:
                raise fields.error(f"duplicate annotation (first at {index[question_id].record})", "keep one")
            index[question_id] = fields
        except DataError as err:
            skip_or_raise(err, skip_bad, report)
    return index


def read_vqa(
    root: Path, split: str, *, skip_bad: bool = False, report: SkippedRecords | None = None
) -> list[VQARecord]:
    """Read a VQA v2 split; see the module docstring for the layout.

    Args:
        root: dataset root as visualqa.org distributes it.
        split: ``train2014``, ``val2014``, ``test2015``, ``test-dev2015``.
        skip_bad: skip defective records instead of raising; the reasons go into ``report``.
        report: filled with the skipped records when ``skip_bad`` is set.
    """
    root = Path(root).absolute()
    qpath = require_file(
        questions_path(root, split),
        f"VQA v2 questions of split '{split}'",
        "v2_OpenEnded_mscoco_*_questions.json",
    )
    apath = annotations_path(root, split)
    annotations: dict[int, Fields] | None = None
    if apath.is_file():
        annotations = _index_annotations(apath, split, skip_bad, report)
    elif not labels_optional(split):
        require_file(apath, f"VQA v2 annotations of split '{split}' (only test splits ship without)")
    images = root / image_folder(split)
    records: list[VQARecord] = []
    seen: dict[int, str] = {}
    for i, item in enumerate(_entries(qpath, "questions", split)):
        fields = Fields(item if isinstance(item, dict) else {}, qpath, f"questions[{i}]")
        try:
            if not isinstance(item, dict):
                raise fields.error("question is not a JSON object", "write one object per question")
            question_id = fields.get("question_id", int)
            fields.record = f"questions[{i}] (question_id {question_id})"
            if question_id in seen:
                raise fields.error(f"duplicate question_id {question_id} (first at {seen[question_id]})", "keep one")
            seen[question_id] = fields.record
            annotation = None
            if annotations is not None:
                annotation = annotations.pop(question_id, None)
                if annotation is None:
                    raise fields.error(
                        f"question_id {question_id} has no annotation in {apath.name}",
                        "add its annotation, or remove the question",
                    )
            records.append(_record(fields, annotation, images))
        except DataError as err:
            skip_or_raise(err, skip_bad, report)
    for fields in (annotations or {}).values():
        skip_or_raise(
            fields.error(f"annotation has no question in {qpath.name}", "add the question, or remove the annotation"),
            skip_bad,
            report,
        )
    return records
