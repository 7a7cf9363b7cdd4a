"""``vldistill data check``: read a dataset strictly, open every image, and count what is there.

The readers already reject every annotation defect; this adds what they skip for speed: each
referenced image exists, decodes, and is not absurdly large (a decompression bomb). Every defective
record and image is found, not only the first: a user fixing a download sees the whole list at once.
They are raised together as :class:`DatasetDefects`, whose lines the CLI prints one per defect (the
first ``MAX_SHOWN``, then a count of the rest). A file-level defect (a missing or unparsable
annotation file) stops the check at once, as a plain :class:`~vldistill.errors.DataError`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vldistill.data.images import ImageRef, image_problem
from vldistill.data.readers import DataLayout, read_task_report
from vldistill.data.records import VE_LABELS, NLVR2Record, Record, SNLIVERecord, VCRRecord, VQARecord
from vldistill.errors import DataError

MAX_SHOWN = 20
"""How many defects ``vldistill data check`` prints before it only counts the rest."""


class DatasetDefects(DataError):
    """Every defect found in a dataset (at least one). Its own fields are the first defect's.

    ``lines()`` gives one line per defect, the first ``shown`` of them, then ``"and N more ..."``.
    """

    def __init__(self, defects: list[DataError], shown: int = MAX_SHOWN) -> None:
        first = defects[0]
        super().__init__(first.file, first.record, first.problem, first.fix)
        self.defects = defects
        self.shown = shown

    def lines(self) -> list[str]:
        lines = [str(defect) for defect in self.defects[: self.shown]]
        hidden = len(self.defects) - len(lines)
        if hidden:
            lines.append(
                f"and {hidden} more defects ({len(self.defects)} in all); "
                "fix: correct those above and run `vldistill data check` again, or pass --show N"
            )
        return lines


def _images(record: Record) -> tuple[str, list[ImageRef]]:
    """A description of ``record`` and the images it refers to."""
    if isinstance(record, VQARecord):
        return f"question_id {record.question_id}", [record.image_path]
    if isinstance(record, SNLIVERecord):
        return f"pairID {record.pair_id}", [record.image_path]
    if isinstance(record, VCRRecord):
        return f"annot_id {record.annot_id}", [record.image_path]
    return f"identifier {record.identifier}", [record.left_image, record.right_image]


def check_images(records: Iterable[Record]) -> tuple[int, list[DataError]]:
    """Open every distinct image the records refer to: how many, and one DataError per defective image.

    Each error names the image and the first record (in file order) that refers to it.
    """
    first_user: dict[ImageRef, str] = {}
    for record in records:
        name, paths = _images(record)
        for path in paths:
            first_user.setdefault(path, name)
    paths = list(first_user)
    # Decoding releases the GIL, so threads overlap the I/O and decoding of many small images.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(image_problem, paths))
    defects = [
        DataError(path, f"image of {first_user[path]}", *problem)
        for path, problem in zip(paths, problems, strict=True)
        if problem is not None
    ]
    return len(paths), defects


def _counts(task: str, records: list[Record]) -> dict[str, int]:
    """Task-specific counts shown by ``vldistill data check``."""
    if task == "vqa":
        vqa = [r for r in records if isinstance(r, VQARecord)]
        types = Counter(r.answer_type for r in vqa if r.answers and r.answer_type)
        return {"answers": sum(len(r.answers) for r in vqa)} | {f"answer_type.{k}": v for k, v in sorted(types.items())}
    if task == "snli_ve":
        labels = Counter(r.gold_label for r in records if isinstance(r, SNLIVERecord))
        return {f"labels.{label}": labels[label] for label in VE_LABELS}
    if task == "vcr":
        vcr = [r for r in records if isinstance(r, VCRRecord)]
        return {
            "objects": sum(len(r.objects) for r in vcr),
            "answer_choices": sum(len(r.answer_choices) for r in vcr),
            "rationale_choices": sum(len(r.rationale_choices) for r in vcr),
            "labelled": sum(r.answer_label is not None for r in vcr),
        }
    labels = Counter(r.label for r in records if isinstance(r, NLVR2Record))
    return {"labels.True": labels[True], "labels.False": labels[False], "labels.missing": labels[None]}


def check_dataset(
    task: str, root: Path, split: str, *, shown: int = MAX_SHOWN, layout: DataLayout | None = None
) -> dict[str, int]:
    """Validate ``split`` of ``task`` under ``root``: every annotation record, then every image.

    Returns counts: ``records``, ``images`` (distinct image files) and task-specific ones, e.g.
    ``answers`` for vqa, ``labels.entailment`` ... for snli_ve. Raises :class:`DatasetDefects` listing
    every defective record (annotation defects in file order, then defective images; ``shown`` of them
    are printed), or a DataError for a file-level defect or an empty split.
    """
    records, skipped = read_task_report(task, Path(root), split, layout=layout)
    images, image_defects = check_images(records)
    defects = skipped.errors + image_defects
    if defects:
        raise DatasetDefects(defects, shown)
    if not records:
        raise DataError(root, None, f"split '{split}' has no records", "point to a non-empty dataset")
    return {"records": len(records), "images": images} | _counts(task, records)
