"""Task-agnostic examples: what a model sees of one record.

Every task is reduced to images, texts and a label, plus the *views* a model scores: a view is one
(image, text) pair. VQA and SNLI-VE have one view per example; VCR has one per candidate (the image
with the question and each of the 4 answers, or rationales); NLVR2 has one per image (each of the two
images with the one statement). Students and teachers compute token features per view, so the
distillation losses never need to know the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vldistill.data.images import ImageRef

TASK_KINDS: dict[str, str] = {
    "vqa": "multilabel",  # soft scores over an answer vocabulary, BCE
    "snli_ve": "classification",  # 3 classes, cross-entropy
    "vcr": "multiple_choice",  # 4 candidate texts, one logit each, softmax over them
    "nlvr2": "pair",  # two images, one statement, 2 classes
}


@dataclass(frozen=True)
class TaskExample:
    """One example, task-agnostic.

    Attributes:
        uid: unique id within its dataset (VQA question_id, SNLI-VE pairID, VCR ``annot_id/qa`` or
            ``annot_id/qar``, NLVR2 identifier).
        task: one of ``TASK_KINDS``.
        images: 1 image (vqa, snli_ve, vcr) or 2 (nlvr2: left, right): a path or a stored image.
        texts: 1 text, or the 4 candidate texts of VCR (question + answer, or question + answer +
            rationale), each a whitespace-separated string.
        label: gold class / candidate index, -1 when unknown (test splits).
        soft_label: VQA only: answer -> official per-answer accuracy in [0, 1].
        candidates: texts a zero-shot teacher (CLIP) scores against the image to judge its
            confidence in the gold answer; ``gold_candidate`` is the index of the gold one (-1: none).
        group: stratification key for low-shot subsets (the answer or label).
    """

    uid: str
    task: str
    images: tuple[ImageRef, ...]
    texts: tuple[str, ...]
    label: int = -1
    soft_label: dict[str, float] | None = None
    candidates: tuple[str, ...] = ()
    gold_candidate: int = -1
    group: str = ""
    meta: dict[str, str] = field(default_factory=dict)


def view_pairs(task: str, n_images: int, n_texts: int) -> list[tuple[int, int]]:
    """The (image index, text index) of each view of an example.

    >>> view_pairs("vcr", 1, 4)
    [(0, 0), (0, 1), (0, 2), (0, 3)]
    >>> view_pairs("nlvr2", 2, 1)
    [(0, 0), (1, 0)]
    """
    if n_images == 1:
        return [(0, t) for t in range(n_texts)]
    if n_texts == 1:
        return [(i, 0) for i in range(n_images)]
    raise ValueError(f"task {task}: cannot pair {n_images} images with {n_texts} texts")


def view_index(task: str, batch_size: int, n_images: int, n_texts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices mapping each of ``batch_size * views`` views to its flat image and text rows.

    Images are laid out as ``(batch * n_images)`` rows and texts as ``(batch * n_texts)`` rows; the
    returned tensors, each of shape ``(batch * views,)``, gather per-view rows from them.
    """
    pairs = view_pairs(task, n_images, n_texts)
    img = [b * n_images + i for b in range(batch_size) for i, _ in pairs]
    txt = [b * n_texts + t for b in range(batch_size) for _, t in pairs]
    return torch.tensor(img, dtype=torch.long), torch.tensor(txt, dtype=torch.long)
