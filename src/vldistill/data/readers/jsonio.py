"""Shared plumbing of the readers: strict UTF-8 JSON / JSON Lines parsing, typed field access, safe paths.

Every defect becomes a :class:`~vldistill.errors.DataError` naming the file, the record (a line number
for JSON Lines, an index or id for JSON lists), the problem and the fix. Record-level defects can be
collected instead of raised (``skip_bad=True``) in a :class:`SkippedRecords` report; file-level
defects (missing file, a JSON file that does not parse) always raise, since nothing can be skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vldistill.errors import DataError

_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object", float: "a number"}


@dataclass
class SkippedRecords:
    """The records a reader skipped with ``skip_bad=True``, each with the reason (a ``DataError``)."""

    errors: list[DataError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.errors)

    def lines(self) -> list[str]:
        """One line per skipped record: ``file: record: problem; fix: ...``."""
        return [str(err) for err in self.errors]


def skip_or_raise(err: DataError, skip_bad: bool, report: SkippedRecords | None) -> None:
    """Raise ``err``, or, with ``skip_bad``, note it in ``report`` (when given) and return."""
    if not skip_bad:
        raise err
    if report is not None:
        report.errors.append(err)


def record_key(record: Any) -> str:
    """The id a record is known by in its file: ``question_id 9000``, ``pairID ...``, ``identifier ...``."""
    for attr, name in (("question_id", "question_id"), ("pair_id", "pairID"), ("annot_id", "annot_id")):
        if hasattr(record, attr):
            return f"{name} {getattr(record, attr)}"
    return f"identifier {record.identifier}"


def collect_records(items: Iterable[Any], file: Path, skip_bad: bool, report: SkippedRecords | None) -> list[Any]:
    """The records among ``items`` (records and DataErrors, in file order); errors and repeated ids are raised,
    or with ``skip_bad`` noted in ``report`` and left out."""
    records: list[Any] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, DataError):
            skip_or_raise(item, skip_bad, report)
            continue
        key = record_key(item)
        if key in seen:
            skip_or_raise(DataError(file, key, "the id appears twice", "keep one of the two"), skip_bad, report)
            continue
        seen.add(key)
        records.append(item)
    return records


def labels_optional(split: str) -> bool:
    """Whether a split may ship without labels: only test splits do (VQA test2015, VCR test, ...)."""
    return split.startswith("test")


def require_file(path: Path, what: str, split_pattern: str | None = None, other_layouts: bool = True) -> Path:
    """Return ``path`` if it is a file, else raise a DataError.

    ``split_pattern`` (e.g. ``"snli_ve_*.jsonl"``, ``*`` standing for the split) lets the fix name
    the splits that are present instead; ``other_layouts``: the fix mentions the ViLT Arrow and
    ``datasets`` layouts (not for VCR, read in its official layout only).
    """
    if path.is_file():
        return path
    folder = path.parent
    if not folder.is_dir():
        raise DataError(folder, None, "folder does not exist", "pass the dataset root as the publisher lays it out")
    fix = "download the file and place it at this path"
    if other_layouts:
        fix += ", or give a root in ViLT's Arrow or a Hugging Face datasets layout (docs/data-layouts.md)"
    if split_pattern is not None:
        prefix, suffix = split_pattern.split("*")
        splits = sorted(p.name[len(prefix) : len(p.name) - len(suffix)] for p in folder.glob(split_pattern))
        if splits:
            fix = f"pick a split present here: {', '.join(splits[:8])}"
    raise DataError(path, None, f"{what} not found", fix)


def decode_utf8(data: bytes, path: Path, record: str | None) -> str:
    """Decode strict UTF-8 (a leading BOM is dropped); a bad byte is reported by line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        where = f"line {line}, column {column}" if record is None else f"column {column}"
        raise DataError(
            path, record, f"non-UTF-8 byte 0x{data[err.start]:02x} at {where}", "re-encode the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def load_json(path: Path) -> Any:
    """Parse a whole JSON file; malformed or truncated JSON is reported with its line and column."""
    text = decode_utf8(path.read_bytes(), path, None)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        problem = f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        if err.pos >= len(text.rstrip()):
            problem += " (the file is truncated)"
        raise DataError(path, None, problem, "re-download or re-export the file") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_line)`` of the non-blank lines of a JSON Lines file (1-based)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def parse_jsonl_line(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    """Decode one JSON Lines line into an object, naming the line (and column) of any defect."""
    record = f"line {number}"
    text = decode_utf8(raw, path, record)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            path,
            record,
            f"invalid JSON at column {err.colno}: {err.msg}",
            "write one complete JSON object per line",
        ) from None
    if not isinstance(value, dict):
        raise DataError(
            path, record, f"expected a JSON object, got {type(value).__name__}", "write one object per line"
        )
    return value


class Fields:
    """Typed access to one record's fields; every accessor raises a DataError naming file and record."""

    def __init__(self, obj: dict[str, Any], file: Path, record: str | None) -> None:
        self.obj = obj
        self.file = file
        self.record = record

    def error(self, problem: str, fix: str) -> DataError:
        """A DataError about this record."""
        return DataError(self.file, self.record, problem, fix)

    def has(self, name: str) -> bool:
        """Whether the field is present and not null."""
        return self.obj.get(name) is not None

    def get(self, name: str, kind: type) -> Any:
        """The field ``name``, required to be present and of ``kind`` (bools are not integers)."""
        if name not in self.obj:
            raise self.error(f"missing field '{name}'", f"add '{name}' ({_TYPE_NAMES[kind]})")
        value = self.obj[name]
        if not is_kind(value, kind):
            raise self.error(
                f"field '{name}' is {_json_type(value)} ({_short(value)}), expected {_TYPE_NAMES[kind]}",
                f"write '{name}' as {_TYPE_NAMES[kind]}",
            )
        return value

    def text(self, name: str) -> str:
        """A required string with some non-whitespace content."""
        value = self.get(name, str)
        if not value.strip():
            raise self.error(f"field '{name}' is empty", f"write the {name} text, or remove the record")
        return value

    def string_or_int(self, name: str) -> str:
        """A required id written as a string or an integer (publishers use both), as a string."""
        value = self.obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.text(name)

    def optional_str(self, name: str) -> str:
        """An optional string field; missing or null gives ``""``."""
        return self.get(name, str) if self.has(name) else ""


def is_kind(value: Any, kind: type) -> bool:
    """JSON-aware isinstance: a boolean is not a number, an integer is a float."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "a list"}
    return "null" if value is None else names.get(type(value), "an object")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def inside_root(base: Path, relative: str, fields: Fields, name: str) -> Path:
    """``base / relative`` (``base`` absolute); a path escaping ``base`` (``..``, absolute) is an error.

    The check is lexical on purpose: publishers' layouts are often symlinked (``vcr1images`` ->
    another disk), and a symlink placed by the user is not an escape.
    """
    if not relative or os.path.isabs(relative):
        raise fields.error(f"field '{name}' ({relative!r}) is not a relative path", f"write it relative to {base}")
    if ".." not in relative.split("/"):  # the common case, kept fast: nothing can escape
        return base / relative
    folder = os.path.normpath(base)
    full = os.path.normpath(os.path.join(folder, relative))
    if os.path.commonpath([folder, full]) != folder:
        raise fields.error(
            f"field '{name}' ({relative!r}) points outside {base}",
            f"remove '..' from '{name}'; files must lie under {base}",
        )
    return Path(full)
