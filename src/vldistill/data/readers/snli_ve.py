"""SNLI-VE reader: ``snli_ve_<split>.jsonl`` over Flickr30K images.

Layout (as github.com/necla-ml/SNLI-VE distributes it)::

    ROOT/snli_ve_<split>.jsonl            split: train, dev, test; one JSON object per line with
                                          Flickr30K_ID, gold_label, pairID, captionID, sentence1 (the
                                          caption the image replaces), sentence2 (the hypothesis), ...
    ROOT/flickr30k_images/<Flickr30K_ID>.jpg
"""

from __future__ import annotations

from pathlib import Path

from vldistill.data.readers.jsonio import (
    Fields,
    SkippedRecords,
    inside_root,
    iter_jsonl,
    parse_jsonl_line,
    require_file,
    skip_or_raise,
)
from vldistill.data.records import VE_LABELS, SNLIVERecord
from vldistill.errors import DataError


def annotations_path(root: Path, split: str) -> Path:
    """The JSON Lines file of ``split`` (``train``, ``dev``, ``test``)."""
    return root / f"snli_ve_{split}.jsonl"


def _record(fields: Fields, root: Path) -> SNLIVERecord:
    pair_id = fields.string_or_int("pairID")
    fields.record = f"{fields.record} (pairID {pair_id})"
    flickr_id = fields.string_or_int("Flickr30K_ID")
    label = fields.get("gold_label", str)
    if label not in VE_LABELS:
        raise fields.error(
            f"gold_label is '{label}'",
            f"use one of {', '.join(VE_LABELS)} (SNLI-VE drops pairs without a gold label)",
        )
    return SNLIVERecord(
        pair_id=pair_id,
        flickr30k_id=flickr_id,
        image_path=inside_root(root / "flickr30k_images", f"{flickr_id}.jpg", fields, "Flickr30K_ID"),
        hypothesis=fields.text("sentence2"),
        gold_label=label,
        premise_caption=fields.optional_str("sentence1"),
        caption_id=fields.optional_str("captionID"),
    )


def read_snli_ve(
    root: Path, split: str, *, skip_bad: bool = False, report: SkippedRecords | None = None
) -> list[SNLIVERecord]:
    """Read an SNLI-VE split (``train``, ``dev``, ``test``); see the module docstring for the layout.

    ``skip_bad`` skips defective lines instead of raising; the reasons go into ``report``.
    """
    root = Path(root).absolute()
    path = require_file(annotations_path(root, split), f"SNLI-VE file of split '{split}'", "snli_ve_*.jsonl")
    records: list[SNLIVERecord] = []
    for number, raw in iter_jsonl(path):
        try:
            records.append(_record(Fields(parse_jsonl_line(path, number, raw), path, f"line {number}"), root))
        except DataError as err:
            skip_or_raise(err, skip_bad, report)
    return records
