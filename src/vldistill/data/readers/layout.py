"""Which layout a dataset root is in, and what identifies a split's data (for the teacher cache key).

Three layouts are read, each into the same records (:mod:`vldistill.data.records`):

- ``official``: the files as each publisher distributes them (:mod:`.vqa`, :mod:`.snli_ve`, :mod:`.vcr`,
  :mod:`.nlvr2`);
- ``vilt_arrow``: Arrow IPC files in the layout of ViLT's and DiDE's data scripts, one row per image with
  the encoded image and lists of texts and labels (:mod:`.vilt_arrow`; VQA v2, SNLI-VE, NLVR2);
- ``hf_datasets``: a Hugging Face ``datasets`` split, a folder written by ``save_to_disk`` or Parquet
  files, with a column mapping (:mod:`.hf_datasets`; VQA v2, SNLI-VE, NLVR2).

``data.format: auto`` (the default) tells them apart by the files present for the split (:func:`detect_format`).
Split names of the other layouts are matched to the official ones (:data:`SPLIT_ALIASES`): ViLT writes VQA v2's
``val2014`` as ``vqav2_val.arrow`` and ``datasets`` calls NLVR2's ``dev`` ``validation``, so a config's default
splits find them; the split's own name always wins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vldistill.errors import ConfigError

DataFormat = Literal["auto", "official", "vilt_arrow", "hf_datasets"]
FORMATS: tuple[str, ...] = ("auto", "official", "vilt_arrow", "hf_datasets")

SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train2014": ("train",),
    "val2014": ("val", "validation"),
    "test2015": ("test",),
    "test-dev2015": ("test-dev", "testdev"),
    "dev": ("validation", "val"),
    "val": ("validation",),
    "test1": ("test",),
}
"""Other layouts' names of an official split, tried in order after the split's own name."""


def split_candidates(split: str) -> tuple[str, ...]:
    """The names to look for ``split`` under: itself, then its aliases.

    >>> split_candidates("val2014")
    ('val2014', 'val', 'validation')
    """
    return (split, *SPLIT_ALIASES.get(split, ()))


@dataclass(frozen=True)
class DataLayout:
    """How to read a root: ``format`` (one of :data:`FORMATS`) and, for ``hf_datasets``, ``columns``
    mapping vldistill's field names to the dataset's column names (:data:`.hf_datasets.FIELDS`)."""

    format: DataFormat = "auto"
    columns: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"data.format '{self.format}' is unknown; fix: use one of {', '.join(FORMATS)}")
        if self.columns and self.format not in ("auto", "hf_datasets"):
            raise ConfigError(
                f"data.columns is set but data.format is '{self.format}'; fix: column mappings are for "
                "hf_datasets: set data.format: hf_datasets (or auto), or remove data.columns"
            )


def _official_file(task: str, root: Path, split: str) -> Path:
    from vldistill.data.readers import nlvr2, snli_ve, vqa

    if task == "vqa":
        return vqa.questions_path(root, split)
    if task == "snli_ve":
        return snli_ve.annotations_path(root, split)
    if task == "vcr":
        return root / f"{split}.jsonl"
    return nlvr2.annotations_path(root, split)


def detect_format(task: str, root: Path, split: str) -> str:
    """The layout of ``split`` under ``root``: the first of official, vilt_arrow, hf_datasets whose files
    for the split are there. When none is, the layout of the other splits found there, else ``official``:
    its reader then says which file is missing and which splits are present."""
    from vldistill.data.readers.hf_datasets import find_split, present_splits
    from vldistill.data.readers.vilt_arrow import PREFIXES, arrow_path

    if _official_file(task, root, split).is_file() or task == "vcr":
        return "official"
    if arrow_path(task, root, split) is not None:
        return "vilt_arrow"
    if find_split(root, split) is not None:
        return "hf_datasets"
    if root.is_dir() and any(root.glob(f"{PREFIXES[task]}_*.arrow")):
        return "vilt_arrow"
    return "hf_datasets" if present_splits(root) else "official"


def resolve_format(task: str, root: Path, split: str, layout: DataLayout) -> str:
    """``layout.format``, or the detected one for ``auto``; VCR is read in its official layout only."""
    fmt = detect_format(task, root, split) if layout.format == "auto" else layout.format
    if task == "vcr" and fmt != "official":
        raise ConfigError(f"data.format '{fmt}' has no VCR reader; fix: give VCR in its official layout")
    return fmt


def _split_files(task: str, root: Path, split: str, fmt: str) -> list[Path]:
    if fmt == "vilt_arrow":
        from vldistill.data.readers.vilt_arrow import arrow_path

        path = arrow_path(task, root, split)
        return [path] if path is not None else []
    from vldistill.data.readers.hf_datasets import find_split

    source = find_split(root, split)
    if source is None:
        return []
    return list(source.files) if source.files else sorted(p for p in source.path.iterdir() if p.is_file())


def split_digest(task: str, root: Path, split: str, layout: DataLayout | None = None) -> str:
    """sha256 identifying the data of ``split`` under ``root``: part of the teacher cache key.

    Official layouts: the content of the root's files whose names hold the split (the annotation files;
    images are keyed by name and size elsewhere). Arrow and Parquet files hold the images too and can be
    tens of GB, so they are identified by name, size and modification time instead (a copy elsewhere then
    gets a new cache, never a stale one).
    """
    root = Path(root)
    fmt = resolve_format(task, root, split, layout or DataLayout())
    h = hashlib.sha256()
    if fmt == "official":
        for f in sorted(p for p in root.iterdir() if p.is_file() and split in p.name):
            h.update(f.name.encode())
            with f.open("rb") as handle:  # in chunks: the same digest as the whole content, never all in memory
                for chunk in iter(lambda handle=handle: handle.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()
    for f in _split_files(task, root, split, fmt):
        stat = f.stat()
        h.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()
