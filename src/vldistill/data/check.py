"""``vldistill data check``: read a dataset strictly, open every image, and count what is there.

The readers already reject every annotation defect; this adds what they skip for speed: each
referenced image exists, decodes, and is not absurdly large (a decompression bomb). The first defect
raises a :class:`~vldistill.errors.DataError` naming the image and the record that refers to it.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from vldistill.data.readers import read_task
from vldistill.data.records import VE_LABELS, NLVR2Record, Record, SNLIVERecord, VCRRecord, VQARecord
from vldistill.errors import DataError

MAX_MEGAPIXELS = 40
"""Images above this many megapixels are refused: no dataset of these tasks has them (decompression bomb)."""


def _image_problem(path: Path) -> tuple[str, str] | None:
    """``(problem, fix)`` if the image at ``path`` is missing, unreadable or too large, else None."""
    if not path.is_file():
        return "image not found", f"download and extract the images into {path.parent}"
    try:
        with warnings.catch_warnings():
            # The explicit size check below replaces PIL's own bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_MEGAPIXELS * 1_000_000:
                    return (
                        f"image is {width}x{height} pixels, over {MAX_MEGAPIXELS} megapixels (a decompression bomb?)",
                        "replace the image with the publisher's original",
                    )
                if image.format == "JPEG":
                    # verify() does not decode JPEG; a draft decode at 1/8 scale is cheap and
                    # catches truncated files.
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    image.load()
                else:
                    image.verify()
    except Image.DecompressionBombError as err:
        return f"image is a decompression bomb ({err})", "replace the image with the publisher's original"
    except (OSError, SyntaxError, ValueError) as err:
        return f"image cannot be read ({err})", "re-download the image"
    return None


def _images(record: Record) -> tuple[str, list[Path]]:
    """A description of ``record`` and the images it refers to."""
    if isinstance(record, VQARecord):
        return f"question_id {record.question_id}", [record.image_path]
    if isinstance(record, SNLIVERecord):
        return f"pairID {record.pair_id}", [record.image_path]
    if isinstance(record, VCRRecord):
        return f"annot_id {record.annot_id}", [record.image_path]
    return f"identifier {record.identifier}", [record.left_image, record.right_image]


def check_images(records: Iterable[Record]) -> int:
    """Open every distinct image the records refer to; return how many; raise on the first defect."""
    first_user: dict[Path, str] = {}
    for record in records:
        name, paths = _images(record)
        for path in paths:
            first_user.setdefault(path, name)
    paths = list(first_user)
    # Decoding releases the GIL, so threads overlap the I/O and decoding of many small images.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for path, problem in zip(paths, pool.map(_image_problem, paths), strict=True):
            if problem is not None:
                raise DataError(path, f"image of {first_user[path]}", *problem)
    return len(paths)


def _counts(task: str, records: list[Record]) -> dict[str, int]:
    """Task-specific counts shown by ``vldistill data check``."""
    if task == "vqa":
        vqa = [r for r in records if isinstance(r, VQARecord)]
        types = Counter(r.answer_type for r in vqa if r.answers)
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


def check_dataset(task: str, root: Path, split: str) -> dict[str, int]:
    """Validate ``split`` of ``task`` under ``root``: annotations, then every image.

    Returns counts: ``records``, ``images`` (distinct image files) and task-specific ones, e.g.
    ``answers`` for vqa, ``labels.entailment`` ... for snli_ve. Raises DataError on the first defect.
    """
    records = read_task(task, Path(root), split)
    if not records:
        raise DataError(root, None, f"split '{split}' has no records", "point to a non-empty dataset")
    counts = {"records": len(records), "images": check_images(records)}
    return counts | _counts(task, records)
