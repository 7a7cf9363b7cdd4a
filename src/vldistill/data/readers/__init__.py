"""Readers of the four tasks' official file formats, one module per task, and of two other layouts.

Each ``read_<task>(root, split, *, skip_bad=False, report=None)`` returns typed records
(:mod:`vldistill.data.records`). Readers only parse annotation files and build image paths (fast);
``vldistill.data.check.check_dataset`` also opens every image. :func:`read_task` also reads VQA v2,
SNLI-VE and NLVR2 from ViLT's Arrow files (:mod:`.vilt_arrow`) and from Hugging Face ``datasets``
folders or Parquet files (:mod:`.hf_datasets`), into the same records: a :class:`DataLayout` names the
layout (``data.format``, default ``auto``: told from the files, :mod:`.layout`) and the column mapping.

Defects raise :class:`~vldistill.errors.DataError` naming file, record, problem and fix. With
``skip_bad=True`` defective *records* are skipped instead, and ``report`` (a :class:`SkippedRecords`),
when given, receives one DataError per skipped record; file-level defects (a missing file, a JSON
file that does not parse) still raise. :func:`read_task_report` does both in one call::

    records, skipped = read_task_report("vcr", root, "val")
    for line in skipped.lines():
        print(line)

Labels may be absent only on splits whose name starts with ``test`` (VQA test2015 has no
annotations file; VCR test and NLVR2 hidden test have no labels).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vldistill.data.readers.jsonio import SkippedRecords
from vldistill.data.readers.layout import DataLayout, resolve_format, split_digest
from vldistill.data.readers.nlvr2 import read_nlvr2
from vldistill.data.readers.snli_ve import read_snli_ve
from vldistill.data.readers.vcr import read_vcr
from vldistill.data.readers.vqa import read_vqa
from vldistill.data.records import TASKS, Record
from vldistill.errors import ConfigError

READERS: dict[str, Callable[..., list]] = {
    "vqa": read_vqa,
    "snli_ve": read_snli_ve,
    "vcr": read_vcr,
    "nlvr2": read_nlvr2,
}


def read_task(
    task: str,
    root: Path,
    split: str,
    *,
    skip_bad: bool = False,
    report: SkippedRecords | None = None,
    layout: DataLayout | None = None,
) -> list[Record]:
    """Read ``split`` of ``task`` (one of ``TASKS``) under ``root``, in the layout ``layout`` names or
    the files show (official, ViLT's Arrow files, Hugging Face ``datasets``; see :mod:`.layout`)."""
    if task not in READERS:
        raise ConfigError(f"unknown task '{task}'; fix: use one of {', '.join(TASKS)}")
    layout = layout or DataLayout()
    root = Path(root)
    fmt = resolve_format(task, root, split, layout)
    if fmt == "vilt_arrow":
        from vldistill.data.readers.vilt_arrow import read_vilt_arrow

        return read_vilt_arrow(task, root, split, skip_bad=skip_bad, report=report)
    if fmt == "hf_datasets":
        from vldistill.data.readers.hf_datasets import read_hf_datasets

        return read_hf_datasets(task, root, split, layout.columns, skip_bad=skip_bad, report=report)
    return READERS[task](root, split, skip_bad=skip_bad, report=report)


def read_task_report(
    task: str, root: Path, split: str, *, layout: DataLayout | None = None
) -> tuple[list[Record], SkippedRecords]:
    """Read ``split`` of ``task`` skipping defective records; returns the records and what was skipped."""
    report = SkippedRecords()
    return read_task(task, root, split, skip_bad=True, report=report, layout=layout), report


__all__ = [
    "READERS",
    "DataLayout",
    "SkippedRecords",
    "read_nlvr2",
    "read_snli_ve",
    "read_task",
    "read_task_report",
    "read_vcr",
    "read_vqa",
    "split_digest",
]
