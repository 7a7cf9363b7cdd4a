"""NLVR2 reader: ``<split>.json``, one JSON object per line, each a statement about a pair of images.

Layout (as github.com/lil-lab/nlvr distributes ``nlvr2/data`` and the image archives)::

    ROOT/<split>.json                     split: train, dev, test1; one JSON object per line with
                                          identifier "<split>-<set>-<pair>-<sentence>", sentence,
                                          label "True"/"False", directory (train only), left_url, ...
    ROOT/images/train/<directory>/train-<set>-<pair>-img0.png   and -img1.png   (train_img.zip)
    ROOT/dev/dev-<set>-<pair>-img0.png                          and -img1.png   (dev_img.zip)
    ROOT/test1/test1-<set>-<pair>-img0.png                      and -img1.png   (test1_img.zip)

The image archives the NLVR2 authors hand out extract as shown: train under ``images/train/``, dev and
test1 at the top (ViLT's DATA.md documents the same tree). Either folder, ``images/<split>/`` or
``<split>/``, is accepted for every split: the first that exists is used, else the one its archive
creates (so a "not found" names where the archive should go). Image file names are built from the
validated identifier and directory only, so no record can point outside the image folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from vldistill.data.readers.jsonio import (
    Fields,
    SkippedRecords,
    iter_jsonl,
    labels_optional,
    parse_jsonl_line,
    require_file,
    skip_or_raise,
)
from vldistill.data.records import NLVR2Record
from vldistill.errors import ConfigError, DataError

LABELS = {"True": True, "False": False}


def annotations_path(root: Path, split: str) -> Path:
    """The JSON Lines file of ``split`` (``train``, ``dev``, ``test1``)."""
    return root / f"{split}.json"


def images_folder(root: Path, split: str) -> Path:
    """The folder of ``split``'s images: ``images/<split>/`` or ``<split>/``, the first that exists.

    When neither exists, the one the split's official archive extracts to: ``images/train/`` for train,
    ``<split>/`` for dev and test1.
    """
    candidates = (root / "images" / split, root / split)
    existing = [folder for folder in candidates if folder.is_dir()]
    if existing:
        return existing[0]
    return candidates[0] if split == "train" else candidates[1]


def _record(fields: Fields, images: Path, split: str) -> NLVR2Record:
    identifier = fields.text("identifier")
    fields.record = f"{fields.record} (identifier {identifier})"
    if not re.fullmatch(rf"{re.escape(split)}-\d+-\d+-\d+", identifier):
        raise fields.error(
            f"identifier '{identifier}' is not '{split}-<set>-<pair>-<sentence>'",
            f"use the publisher's identifiers; this file is split '{split}'",
        )
    stem = identifier.rsplit("-", 1)[0]
    label: bool | None = None
    if fields.has("label") or not labels_optional(split):
        text = fields.get("label", str)
        if text not in LABELS:
            raise fields.error(f"label is '{text}'", 'write "True" or "False" (strings)')
        label = LABELS[text]
    # The identifier and directory are validated above, so these paths cannot leave ``images``.
    folder = images
    if fields.has("directory"):
        directory = fields.get("directory", int)
        if directory < 0:
            raise fields.error(f"directory is negative ({directory})", "use the image folder number")
        folder = images / str(directory)
    return NLVR2Record(
        identifier=identifier,
        sentence=fields.text("sentence"),
        label=label,
        left_image=folder / f"{stem}-img0.png",
        right_image=folder / f"{stem}-img1.png",
    )


def read_nlvr2(
    root: Path, split: str, *, skip_bad: bool = False, report: SkippedRecords | None = None
) -> list[NLVR2Record]:
    """Read an NLVR2 split (``train``, ``dev``, ``test1``); see the module docstring for the layout.

    ``skip_bad`` skips defective lines instead of raising; the reasons go into ``report``.
    """
    root = Path(root).absolute()
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ConfigError(f"NLVR2 split '{split}' is not a plain name; fix: use train, dev, test1 or test2")
    images = images_folder(root, split)
    path = require_file(annotations_path(root, split), f"NLVR2 file of split '{split}'", "*.json")
    records: list[NLVR2Record] = []
    for number, raw in iter_jsonl(path):
        try:
            fields = Fields(parse_jsonl_line(path, number, raw), path, f"line {number}")
            records.append(_record(fields, images, split))
        except DataError as err:
            skip_or_raise(err, skip_bad, report)
    return records
