"""Hugging Face ``datasets`` splits: a ``save_to_disk`` folder or Parquet files, with a column mapping.

Where a split is found (the first that exists, for the split's name and then its aliases,
:data:`~vldistill.data.readers.layout.SPLIT_ALIASES`)::

    ROOT/<split>/state.json ...              Dataset.save_to_disk(ROOT/<split>), or DatasetDict.save_to_disk(ROOT)
    ROOT/<split>-*.parquet, ROOT/<split>.parquet, ROOT/data/<split>-*.parquet (the Hub's layout),
    ROOT/<split>/*.parquet

Each row is one record. ``data.columns`` maps vldistill's field names (:data:`FIELDS`) to the dataset's
columns; a field left out is read from its default column, the name the publisher's files use
(``HuggingFaceM4/VQAv2`` uses the VQA v2 names). Per task:

- ``vqa``: ``question_id``, ``image_id`` (ints), ``question``, ``image``, ``answers`` (the ten annotator
  answers: ``{answer, answer_confidence, answer_id}`` objects as in the annotations file, or ten strings;
  optional on test splits), optional ``question_type``, ``answer_type``, ``multiple_choice_answer``;
- ``snli_ve``: ``pair_id``, ``flickr30k_id``, ``image``, ``hypothesis``, ``label`` (a label name, or a
  ``ClassLabel`` whose names are the labels), optional ``premise``, ``caption_id``;
- ``nlvr2``: ``identifier``, ``sentence``, ``label`` (``"True"``/``"False"``, a boolean, or a
  ``ClassLabel`` named so; optional on test splits), ``left_image``, ``right_image``.

An image column is a ``datasets.Image()`` column with the bytes stored (``save_to_disk`` and the Hub's
Parquet files store them) or a binary column of encoded images. Only the text columns are read into
memory; the images stay in the memory-mapped Arrow files until decoded
(:class:`~vldistill.data.images.StoredImage`, row = the row's index in the split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vldistill.data.images import STORE_FIX, StoredImage, TableSource, open_table
from vldistill.data.readers.jsonio import Fields, SkippedRecords, collect_records, labels_optional
from vldistill.data.readers.layout import split_candidates
from vldistill.data.readers.nlvr2 import LABELS as NLVR2_LABELS
from vldistill.data.readers.vqa import annotator_answers
from vldistill.data.records import VE_LABELS, NLVR2Record, Record, SNLIVERecord, VQAAnswer, VQARecord
from vldistill.errors import ConfigError, DataError

FIELDS: dict[str, dict[str, str]] = {
    "vqa": {
        "question_id": "question_id",
        "image_id": "image_id",
        "question": "question",
        "image": "image",
        "answers": "answers",
        "question_type": "question_type",
        "answer_type": "answer_type",
        "multiple_choice_answer": "multiple_choice_answer",
    },
    "snli_ve": {
        "pair_id": "pairID",
        "flickr30k_id": "Flickr30K_ID",
        "image": "image",
        "hypothesis": "sentence2",
        "label": "gold_label",
        "premise": "sentence1",
        "caption_id": "captionID",
    },
    "nlvr2": {
        "identifier": "identifier",
        "sentence": "sentence",
        "label": "label",
        "left_image": "left_image",
        "right_image": "right_image",
    },
}
"""Per task, vldistill's field -> its default column."""
OPTIONAL = {
    "vqa": ("question_type", "answer_type", "multiple_choice_answer"),
    "snli_ve": ("premise", "caption_id"),
    "nlvr2": (),
}
LABEL_FIELDS = {"vqa": "answers", "snli_ve": "label", "nlvr2": "label"}  # optional on test splits
IMAGE_FIELDS = {"vqa": ("image",), "snli_ve": ("image",), "nlvr2": ("left_image", "right_image")}


def check_columns(task: str, columns: Mapping[str, str]) -> None:
    """Raise ConfigError for a ``data.columns`` key that is not a field of ``task`` (or a task without one)."""
    if task not in FIELDS:
        raise ConfigError(f"data.columns: task '{task}' is read in its official layout only; fix: remove data.columns")
    unknown = sorted(set(columns) - set(FIELDS[task]))
    if unknown:
        raise ConfigError(
            f"data.columns.{unknown[0]} is not a field of {task}; fix: map one of {', '.join(FIELDS[task])}"
        )


def find_split(root: Path, split: str) -> TableSource | None:
    """Where ``split`` (or an alias) is under ``root``: a ``save_to_disk`` folder or Parquet files; None if absent."""
    for name in split_candidates(split):
        folder = root / name
        if (folder / "state.json").is_file():
            return TableSource("hf_disk", folder)
        patterns = [(root, f"{name}-*.parquet"), (root, f"{name}.parquet"), (root / "data", f"{name}-*.parquet")]
        patterns += [(root / "data", f"{name}.parquet"), (folder, "*.parquet")]
        files = sorted({f for base, pattern in patterns if base.is_dir() for f in base.glob(pattern) if f.is_file()})
        if files:
            return TableSource("hf_parquet", files[0] if len(files) == 1 else files[0].parent, tuple(files))
    return None


def present_splits(root: Path) -> list[str]:
    """The split names of the ``save_to_disk`` folders and Parquet files under ``root``."""
    folders = [p.name for p in root.iterdir() if (p / "state.json").is_file()] if root.is_dir() else []
    files = [
        p.name.split("-")[0].removesuffix(".parquet") for base in (root, root / "data") for p in base.glob("*.parquet")
    ]
    return sorted({*folders, *files})


def _image_problems(table: Any, source: TableSource, column: str, feature: Any) -> list[str | None]:
    """Per row, why its image cell is unusable (None: it holds bytes), from the Arrow offsets alone."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    data = table.column(column)
    binary = isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary")
    if not (isinstance(feature, datasets.Image) or binary):
        raise DataError(
            source.path,
            None,
            f"column '{column}' is {feature}, not an image",
            "map the image field to an Image() column",
        )
    if pa.types.is_struct(data.type):
        paths = pc.struct_field(data, "path").to_pylist()
        data = pc.struct_field(data, "bytes")
    else:
        paths = [None] * len(data)
    problems: list[str | None] = []
    for length, path in zip(pc.binary_length(data).to_pylist(), paths, strict=True):
        if length:
            problems.append(None)
        else:
            problems.append(f"column '{column}' holds no image bytes" + (f" (only the path {path})" if path else ""))
    return problems


def _vqa(f: Fields, row: int, image: Callable[[str], StoredImage], split: str) -> VQARecord:
    question_id = f.get("question_id", int)
    f.record = f"row {row} (question_id {question_id})"
    answers: tuple[VQAAnswer, ...] = ()
    raw = f.obj.get("answers")
    if raw or not labels_optional(split):
        raw = f.get("answers", list)
        if raw and all(isinstance(a, str) for a in raw):
            if len(raw) != 10:
                raise f.error(f"has {len(raw)} answers, expected 10", "give the ten annotator answers")
            answers = tuple(VQAAnswer(a, "", k + 1) for k, a in enumerate(raw))
        else:
            answers = annotator_answers(f)
    return VQARecord(
        question_id=question_id,
        image_id=f.get("image_id", int),
        question=f.text("question"),
        image_path=image("image"),
        question_type=f.optional_str("question_type"),
        answer_type=f.optional_str("answer_type"),
        multiple_choice_answer=f.optional_str("multiple_choice_answer"),
        answers=answers,
    )


def _snli_ve(f: Fields, row: int, image: Callable[[str], StoredImage], split: str) -> SNLIVERecord:
    pair_id = f.string_or_int("pair_id")
    f.record = f"row {row} (pairID {pair_id})"
    label = f.get("label", str)
    if label not in VE_LABELS:
        raise f.error(f"label is '{label}'", f"use one of {', '.join(VE_LABELS)}")
    return SNLIVERecord(
        pair_id=pair_id,
        flickr30k_id=f.string_or_int("flickr30k_id"),
        image_path=image("image"),
        hypothesis=f.text("hypothesis"),
        gold_label=label,
        premise_caption=f.optional_str("premise"),
        caption_id=str(f.obj["caption_id"]) if f.has("caption_id") else "",
    )


def _nlvr2(f: Fields, row: int, image: Callable[[str], StoredImage], split: str) -> NLVR2Record:
    identifier = f.text("identifier")
    f.record = f"row {row} (identifier {identifier})"
    label: bool | None = None
    if f.has("label") or not labels_optional(split):
        value = f.obj.get("label")
        if not isinstance(value, bool):
            if f.get("label", str) not in NLVR2_LABELS:
                raise f.error(f"label is '{value}'", 'write "True" or "False", or a boolean')
            value = NLVR2_LABELS[value]
        label = value
    return NLVR2Record(identifier, f.text("sentence"), label, image("left_image"), image("right_image"))


RECORDS = {"vqa": _vqa, "snli_ve": _snli_ve, "nlvr2": _nlvr2}


def read_hf_datasets(
    task: str,
    root: Path,
    split: str,
    columns: Mapping[str, str] | None = None,
    *,
    skip_bad: bool = False,
    report: SkippedRecords | None = None,
) -> list[Record]:
    """Read ``split`` of ``task`` (vqa, snli_ve, nlvr2) from a ``datasets`` folder or Parquet files.

    ``columns`` maps fields to columns (module docstring); ``StoredImage.column`` is the dataset's own column.

    Raises:
        ConfigError: a ``columns`` key that is not a field of ``task``.
        DataError: no such split, an unopenable dataset, a missing or mistyped column (file level, always
            raised); a defective row (skipped instead with ``skip_bad``, noted in ``report``).
    """
    columns = dict(columns or {})
    check_columns(task, columns)
    mapping = FIELDS[task] | columns
    root = Path(root).absolute()
    source = find_split(root, split)
    if source is None:
        present = present_splits(root)
        fix = f"pick a split present here: {', '.join(present[:8])}" if present else "save it with Dataset.save_to_disk"
        raise DataError(
            root / split, None, f"no datasets split '{split}' (a save_to_disk folder or Parquet files)", fix
        )
    dataset = open_table(source)
    names = set(dataset.column_names)
    optional = set(OPTIONAL[task]) | ({LABEL_FIELDS[task]} if labels_optional(split) else set())
    for field, column in mapping.items():
        if column not in names and field not in optional:
            raise DataError(
                source.path,
                None,
                f"missing column '{column}' for field '{field}' (columns: {', '.join(dataset.column_names)})",
                f"map it: data.columns.{field}: <column> (data check: --column {field}=<column>)",
            )
    present = {field: column for field, column in mapping.items() if column in names}
    images = {field: present[field] for field in IMAGE_FIELDS[task]}
    texts = {field: column for field, column in present.items() if field not in images}
    problems = {
        field: _image_problems(dataset.select_columns([column])[:], source, column, dataset.features[column])
        for field, column in images.items()
    }
    label_names = _label_names(dataset.features.get(texts.get("label", "")))
    table = dataset.select_columns(list(dict.fromkeys(texts.values())))[:]

    def items() -> Iterator[Record | DataError]:
        for row, obj in enumerate(table.to_pylist()):
            values = {field: obj[column] for field, column in texts.items()}
            if label_names is not None and isinstance(values.get("label"), int):
                values["label"] = label_names[values["label"]] if 0 <= values["label"] < len(label_names) else None
            fields = Fields(values, source.path, f"row {row}")
            try:
                bad = next((p for field in images if (p := problems[field][row]) is not None), None)
                if bad is not None:
                    raise fields.error(bad, STORE_FIX)
                yield RECORDS[task](fields, row, lambda field, row=row: StoredImage(source, row, images[field]), split)
            except DataError as err:
                yield err

    return collect_records(items(), source.path, skip_bad, report)


def _label_names(feature: Any) -> list[str] | None:
    """The names of a ``ClassLabel`` feature (its ints index them; -1, "no label", becomes None), else None."""
    import datasets

    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
