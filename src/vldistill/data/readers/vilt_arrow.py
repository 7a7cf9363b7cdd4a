"""Arrow IPC files in the layout of ViLT's and DiDE's data scripts: one row per image, read memory-mapped.

The columns are those the projects' writers produce (``pandas.DataFrame`` -> ``pa.Table.from_pandas`` ->
``pa.RecordBatchFileWriter``, the Arrow IPC *file* format)::

    ROOT/vqav2_<split>.arrow      dandelin/ViLT vilt/utils/write_vqa.py; split train, val, trainable_val,
                                  rest_val, test, test-dev
        image          binary            the COCO JPEG, as read from disk
        image_id       int
        questions      list<str>         the image's questions
        question_id    list<int>
        answers        list<list<str>>   per question, its answers in ViLT's vocabulary (test: [])
        answer_scores  list<list<float>> per answer min(1, n/3)-style score of its n annotators (test: [])
        answer_labels, split             not read (ViLT's vocabulary indices; the split name)
    ROOT/snli_ve_<split>.arrow    DiDE (kugwzk/DiDE) src/vilt/utils/write_snli_ve.py; split train, dev, test
        image binary; questions list<str> (hypotheses); answers list<str> (entailment, neutral,
        contradiction); identifier str (the Flickr30K image id)
    ROOT/nlvr2_<split>.arrow      ViLT write_nlvr2.py (and DiDE's); split train, dev, test1, balanced_dev, ...
        image_0, image_1 binary (left, right PNG); questions list<str>; answers list<str> ("True"/"False");
        identifier str ("<split>-<set>-<pair>")

What the writers drop, and how records are filled in (each documented choice):

- **VQA v2**: the ten annotator answers are not kept, only each answer of ViLT's vocabulary with its
  score, 0.3, 0.6, 0.9 or 1.0 for 1, 2, 3 or at least 4 of the ten annotators: exactly the official
  leave-one-out accuracy of an answer given that many times (GT-Vision-Lab/VQA ``vqaEval.py``). Scores
  are not used as targets: the reader turns each into its number of annotators, checked against the
  official metric (:func:`vldistill.metrics.vqa.answer_scores`), and rebuilds ten annotator answers, each
  answer that many times (4 for "at least 4") and ``""`` for the rest, so the official accuracy of every
  answer, for training targets and evaluation alike, is recomputed by the official rules and equals the
  file's score. Answers outside ViLT's vocabulary (fewer than 9 occurrences as a most common answer in
  train + val) were dropped by the writer and score 0; question and answer types are absent (``""``).
- **SNLI-VE**: no pairID or caption: ``pair_id`` is ``<identifier>#<k>``, ``k`` the hypothesis's position
  in its row.
- **NLVR2**: a row is an image pair; its statements' own identifiers lost their last part, so statement
  ``k`` of row ``<split>-<set>-<pair>`` is ``<split>-<set>-<pair>-<k>`` (the published identifier when a
  pair's sentences are numbered 0, 1, ... in file order).

Images are :class:`~vldistill.data.images.StoredImage` references (file, row, column), read when decoded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from vldistill.data.images import StoredImage, TableSource, open_table
from vldistill.data.readers.jsonio import Fields, SkippedRecords, collect_records, labels_optional
from vldistill.data.readers.layout import split_candidates
from vldistill.data.readers.nlvr2 import LABELS as NLVR2_LABELS
from vldistill.data.records import VE_LABELS, NLVR2Record, Record, SNLIVERecord, VQAAnswer, VQARecord
from vldistill.errors import DataError

PREFIXES = {"vqa": "vqav2", "snli_ve": "snli_ve", "nlvr2": "nlvr2"}
IMAGE_COLUMNS = {"vqa": ("image",), "snli_ve": ("image",), "nlvr2": ("image_0", "image_1")}
TEXT_COLUMNS = {
    "vqa": ("image_id", "questions", "question_id", "answers", "answer_scores"),
    "snli_ve": ("identifier", "questions", "answers"),
    "nlvr2": ("identifier", "questions", "answers"),
}
ID_COLUMNS = {"vqa": "image_id", "snli_ve": "identifier", "nlvr2": "identifier"}
WRITERS = {
    "vqa": "ViLT's vilt/utils/write_vqa.py",
    "snli_ve": "DiDE's vilt/utils/write_snli_ve.py",
    "nlvr2": "ViLT's vilt/utils/write_nlvr2.py",
}
ANNOTATORS = 10


def arrow_path(task: str, root: Path, split: str) -> Path | None:
    """The Arrow file of ``split`` (or of its alias, e.g. ``vqav2_val.arrow`` for ``val2014``), if present."""
    for name in split_candidates(split):
        path = root / f"{PREFIXES[task]}_{name}.arrow"
        if path.is_file():
            return path
    return None


@cache
def annotator_counts() -> dict[float, int]:
    """Official accuracy of an answer given by ``n`` of ten annotators -> ``n``, for n = 1..4 (4: "at least 4").

    Computed with the official metric (:func:`vldistill.metrics.vqa.answer_scores`): 0.3, 0.6, 0.9, 1.0.
    """
    from vldistill.metrics.vqa import answer_scores

    return {round(answer_scores(["red"] * n + ["blue"] * (ANNOTATORS - n))["red"], 6): n for n in range(1, 5)}


def _annotator_answers(q: Fields) -> tuple[VQAAnswer, ...]:
    """Ten annotator answers giving each answer of the file its score under the official metric."""
    words, scores = q.get("answers", list), q.get("answer_scores", list)
    if len(words) != len(scores) or not words:
        raise q.error(
            f"has {len(words)} answers and {len(scores)} answer_scores",
            f"give each question at least one answer and one score per answer ({WRITERS['vqa']} does)",
        )
    counts: dict[str, int] = {}
    for word, score in zip(words, scores, strict=True):
        if not isinstance(word, str) or isinstance(score, bool) or not isinstance(score, int | float):
            raise q.error(f"answer {word!r} with score {score!r}", "write answers as strings and scores as numbers")
        n = annotator_counts().get(round(score, 6))
        if n is None:
            raise q.error(
                f"answer '{word}' has score {score}, which no number of the ten annotators gives "
                "(official VQA accuracy: 0.3, 0.6, 0.9, 1.0)",
                f"write the file with {WRITERS['vqa']}",
            )
        if word in counts:
            raise q.error(f"answer '{word}' is listed twice", "list each answer once, with its score")
        counts[word] = n
    if sum(counts.values()) > ANNOTATORS:
        raise q.error(
            f"the scores need {sum(counts.values())} annotators, more than ten", f"write the file with {WRITERS['vqa']}"
        )
    given = [word for word, n in counts.items() for _ in range(n)]
    given += [""] * (ANNOTATORS - len(given))
    return tuple(_answer(word, k + 1) for k, word in enumerate(given))


@lru_cache(maxsize=1 << 16)
def _answer(word: str, answer_id: int) -> VQAAnswer:
    """One rebuilt annotator answer; immutable, so shared by every question that has it (time and memory)."""
    return VQAAnswer(word, "", answer_id)


def _vqa_row(fields: Fields, row: int, source: TableSource, split: str) -> Iterator[Record | DataError]:
    image_id = fields.get("image_id", int)
    fields.record = f"row {row} (image_id {image_id})"
    questions, ids = fields.get("questions", list), fields.get("question_id", list)
    answers, scores = fields.get("answers", list), fields.get("answer_scores", list)
    if len(ids) != len(questions):
        raise fields.error(f"has {len(questions)} questions but {len(ids)} question_id", "give one id per question")
    labelled = bool(answers) or not labels_optional(split)
    if labelled and not len(answers) == len(scores) == len(questions):
        raise fields.error(
            f"has {len(questions)} questions, {len(answers)} answer lists and {len(scores)} score lists",
            "give one answer list and one score list per question",
        )
    image = StoredImage(source, row, "image")
    for k, (question_id, text) in enumerate(zip(ids, questions, strict=True)):
        obj = {"question_id": question_id, "question": text}
        if labelled:
            obj |= {"answers": answers[k], "answer_scores": scores[k]}
        q = Fields(obj, fields.file, f"row {row}, question {k}")
        try:
            qid = q.get("question_id", int)
            q.record = f"row {row}, question {k} (question_id {qid})"
            annotated = _annotator_answers(q) if labelled else ()
            yield VQARecord(qid, image_id, q.text("question"), image, answers=annotated)
        except DataError as err:
            yield err


def _texts_and_labels(fields: Fields, row: int, kind: str) -> tuple[str, list[Any], list[Any]]:
    identifier = fields.string_or_int("identifier")
    fields.record = f"row {row} (identifier {identifier})"
    texts, labels = fields.get("questions", list), fields.get("answers", list)
    if labels and len(labels) != len(texts):
        raise fields.error(f"has {len(texts)} {kind} but {len(labels)} answers", f"give one label per {kind[:-1]}")
    return identifier, texts, labels


def _snli_ve_row(fields: Fields, row: int, source: TableSource, split: str) -> Iterator[Record | DataError]:
    identifier, hypotheses, labels = _texts_and_labels(fields, row, "hypotheses")
    if not labels and hypotheses:
        raise fields.error("has no answers (labels)", f"give one label per hypothesis, as {WRITERS['snli_ve']} does")
    image = StoredImage(source, row, "image")
    for k, (hypothesis, label) in enumerate(zip(hypotheses, labels, strict=True)):
        h = Fields({"hypothesis": hypothesis, "label": label}, fields.file, f"row {row}, hypothesis {k}")
        try:
            if h.get("label", str) not in VE_LABELS:
                raise h.error(f"label is '{label}'", f"use one of {', '.join(VE_LABELS)}")
            yield SNLIVERecord(f"{identifier}#{k}", identifier, image, h.text("hypothesis"), label)
        except DataError as err:
            yield err


def _nlvr2_row(fields: Fields, row: int, source: TableSource, split: str) -> Iterator[Record | DataError]:
    identifier, sentences, labels = _texts_and_labels(fields, row, "statements")
    if not re.fullmatch(r"[A-Za-z0-9_]+-\d+-\d+", identifier):
        raise fields.error(f"identifier '{identifier}' is not '<split>-<set>-<pair>'", "use ViLT's identifiers")
    if not labels and not labels_optional(split):
        raise fields.error("has no answers (labels)", f"give one label per statement, as {WRITERS['nlvr2']} does")
    left, right = StoredImage(source, row, "image_0"), StoredImage(source, row, "image_1")
    for k, sentence in enumerate(sentences):
        record = f"row {row}, statement {k} (identifier {identifier}-{k})"
        s = Fields({"sentence": sentence, "label": labels[k] if labels else None}, fields.file, record)
        try:
            label = None
            if labels:
                if s.get("label", str) not in NLVR2_LABELS:
                    raise s.error(f"label is '{labels[k]}'", 'write "True" or "False" (strings)')
                label = NLVR2_LABELS[labels[k]]
            yield NLVR2Record(f"{identifier}-{k}", s.text("sentence"), label, left, right)
        except DataError as err:
            yield err


ROW_READERS: dict[str, Callable[[Fields, int, TableSource, str], Iterator[Record | DataError]]] = {
    "vqa": _vqa_row,
    "snli_ve": _snli_ve_row,
    "nlvr2": _nlvr2_row,
}


def _image_lengths(table: Any, path: Path, column: str) -> list[int | None]:
    """Byte length of each row's image (None: null), from the Arrow offsets: no image is read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = table.column(column)
    if not (pa.types.is_binary(data.type) or pa.types.is_large_binary(data.type)):
        raise DataError(
            path,
            None,
            f"column '{column}' is {data.type}, expected binary (the encoded image)",
            "store the image bytes",
        )
    return pc.binary_length(data).to_pylist()


def read_vilt_arrow(
    task: str, root: Path, split: str, *, skip_bad: bool = False, report: SkippedRecords | None = None
) -> list[Record]:
    """Read ``split`` of ``task`` (vqa, snli_ve, nlvr2) from ViLT's Arrow layout; see the module docstring.

    Only the text columns are read; image bytes stay in the memory-mapped file until decoded.

    Raises:
        DataError: a missing, truncated or non-IPC file, or a missing column (file level, always raised);
            a defective row or question (skipped instead with ``skip_bad``, noted in ``report``).
    """
    root = Path(root).absolute()
    path = arrow_path(task, root, split)
    if path is None:
        present = sorted(
            p.name[len(PREFIXES[task]) + 1 : -len(".arrow")] for p in root.glob(f"{PREFIXES[task]}_*.arrow")
        )
        fix = f"pick a split present here: {', '.join(present[:8])}" if present else f"write it with {WRITERS[task]}"
        raise DataError(root / f"{PREFIXES[task]}_{split}.arrow", None, f"Arrow file of split '{split}' not found", fix)
    source = TableSource("arrow_ipc", path)
    table = open_table(source)
    missing = [c for c in (*IMAGE_COLUMNS[task], *TEXT_COLUMNS[task]) if c not in table.column_names]
    if missing:
        raise DataError(
            path,
            None,
            f"missing column '{missing[0]}' (columns: {', '.join(table.column_names)})",
            f"write the file with {WRITERS[task]}",
        )
    lengths = {c: _image_lengths(table, path, c) for c in IMAGE_COLUMNS[task]}

    def items() -> Iterator[Record | DataError]:
        for row, obj in enumerate(table.select(list(TEXT_COLUMNS[task])).to_pylist()):
            fields = Fields(obj, path, f"row {row}")
            try:
                empty = [c for c, n in lengths.items() if not n[row]]
                if empty:
                    key = ID_COLUMNS[task]
                    fields.record = f"row {row} ({key} {obj.get(key)})"
                    raise fields.error(f"column '{empty[0]}' holds no image bytes", "store the encoded image")
                yield from ROW_READERS[task](fields, row, source, split)
            except DataError as err:
                yield err

    return collect_records(items(), path, skip_bad, report)
