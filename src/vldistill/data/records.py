"""Typed records of the four tasks, one per official example, as the publishers define them.

Readers (``vldistill.data.readers``) turn official files into these records; the generated world
writes official files, never records, so the demo goes through the same readers as real data.
Images are named by :data:`~vldistill.data.images.ImageRef`: in the publishers' layouts an absolute
path, checked to stay inside the dataset root; in layouts that store the images (ViLT's Arrow files,
Hugging Face ``datasets``) a :class:`~vldistill.data.images.StoredImage`, a row and column of a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vldistill.data.images import ImageRef

VE_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
"""SNLI-VE label order used for class indices everywhere in vldistill."""


@dataclass(frozen=True)
class VQAAnswer:
    """One of the ten annotator answers of a VQA v2 question.

    ``answer_confidence`` is ``""`` where the layout does not carry it (ViLT's Arrow files, see
    :mod:`vldistill.data.readers.vilt_arrow`).
    """

    answer: str
    answer_confidence: Literal["yes", "maybe", "no", ""]
    answer_id: int


@dataclass(frozen=True)
class VQARecord:
    """A VQA v2 question joined with its annotation (``v2_mscoco_<split>_annotations.json``).

    ``answers`` is empty for test splits, which ship questions only.
    """

    question_id: int
    image_id: int
    question: str
    image_path: ImageRef
    question_type: str = ""
    answer_type: str = ""
    multiple_choice_answer: str = ""
    answers: tuple[VQAAnswer, ...] = ()


@dataclass(frozen=True)
class SNLIVERecord:
    """One SNLI-VE line (``snli_ve_<split>.jsonl``): a Flickr30K image as premise, a hypothesis."""

    pair_id: str
    flickr30k_id: str
    image_path: ImageRef
    hypothesis: str  # sentence2
    gold_label: str  # one of VE_LABELS
    premise_caption: str = ""  # sentence1, the caption SNLI-VE replaced by the image
    caption_id: str = ""


@dataclass(frozen=True)
class VCRObjectBox:
    """A detected object of a VCR image (metadata JSON): box in pixels and its class name."""

    name: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float


VCRToken = str | list[int]
"""A VCR token: a word, or a list of indices into the example's ``objects``."""


@dataclass(frozen=True)
class VCRRecord:
    """One VCR line (``<split>.jsonl``) joined with its image metadata JSON.

    ``question``, each answer and each rationale are token lists in which an object reference is a
    list of indices into ``objects``. Labels are ``None`` on the test split.
    """

    annot_id: str
    img_fn: str
    metadata_fn: str
    image_path: ImageRef
    objects: tuple[str, ...]
    question: tuple[VCRToken, ...]
    answer_choices: tuple[tuple[VCRToken, ...], ...]
    rationale_choices: tuple[tuple[VCRToken, ...], ...]
    answer_label: int | None
    rationale_label: int | None
    boxes: tuple[VCRObjectBox, ...] = field(default=())
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class NLVR2Record:
    """One NLVR2 statement (``<split>.json``, a JSON object per line) over a pair of images."""

    identifier: str
    sentence: str
    label: bool | None  # "True" / "False" in the file; None when absent (hidden test)
    left_image: ImageRef
    right_image: ImageRef


Record = VQARecord | SNLIVERecord | VCRRecord | NLVR2Record
TASKS: tuple[str, ...] = ("vqa", "snli_ve", "vcr", "nlvr2")
