"""Teacher outputs as fixed-shape, per-example *targets*: what the losses consume and the cache stores.

A live teacher and the teacher cache must feed the losses the very same tensors, so both go through
:func:`teacher_targets`: every value has the batch as its first dimension and a shape that does not
depend on the batch (text is pooled to ``max_words`` words, candidates padded to ``max_candidates``,
fusion-teacher attention padded to the teacher's ``max_length``), which lets the cache store one row
per example.

Keys (``I`` images and ``T`` texts per example, ``V`` views, ``W`` words, ``K`` candidates):
- ``image_tokens`` ``(B, I, P, D)``, ``image_embeds`` ``(B, I, E)``, ``image_grid`` ``(B, 2)`` long;
  ``image_token_embeds`` ``(B, I, P, E)`` when the teacher maps tokens into its joint space (CLIP).
- ``text_words`` ``(B, T, W, D)``, ``text_word_mask`` ``(B, T, W)`` bool, ``text_embeds`` ``(B, T, E)``;
  ``text_word_embeds`` ``(B, T, W, E)`` for joint-space teachers.
- ``candidate_logits`` ``(B, K)``, ``candidate_mask`` ``(B, K)`` bool (zero-shot teachers).
- fusion teachers: ``logits`` ``(B, C)``, ``t2i`` ``(B, V, H, L, P)``, ``i2t`` ``(B, V, H, P, L)``,
  ``text_mask`` ``(B, V, L)`` bool, ``image_mask`` ``(B, V, P)`` bool.

**Parts** (what the teacher cache stores once): ``IMAGE_FIELDS`` depend on one image alone and
``TEXT_FIELDS`` on one text alone, so :func:`image_part` and :func:`text_part` compute them per
distinct image / text; everything else depends on the pair (a fusion teacher's attention and logits,
zero-shot candidate scores) and stays per example (:func:`pair_part`). :func:`target_parts` says which
parts a teacher has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from vldistill.data.examples import TaskExample
from vldistill.distill.align import pool_words
from vldistill.models.outputs import FusionTeacherOutput, UnimodalTeacherOutput


def _per_example(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(B * n, ...)`` -> ``(B, n, ...)``."""
    return x.reshape(batch_size, x.shape[0] // batch_size, *x.shape[1:])


def _pad_to(x: torch.Tensor, dim: int, size: int, value: float | bool = 0) -> torch.Tensor:
    missing = size - x.shape[dim]
    if missing < 0:
        return x.narrow(dim, 0, size)
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def unimodal_targets(out: UnimodalTeacherOutput, batch_size: int, *, max_words: int) -> dict[str, torch.Tensor]:
    """Targets of a unimodal (or CLIP) teacher's output; see the module docstring for the keys."""
    t: dict[str, torch.Tensor] = {}
    if out.image_tokens is not None:
        assert out.image_grid is not None and out.image_embeds is not None
        t["image_tokens"] = _per_example(out.image_tokens, batch_size)
        t["image_embeds"] = _per_example(out.image_embeds, batch_size)
        t["image_grid"] = torch.tensor([list(out.image_grid)] * batch_size, dtype=torch.long)
        token_embeds = getattr(out, "image_token_embeds", None)
        if token_embeds is not None:
            t["image_token_embeds"] = _per_example(F.normalize(token_embeds, dim=-1), batch_size)
    if out.text_tokens is not None:
        assert out.text_word_index is not None and out.text_embeds is not None
        words, mask = pool_words(out.text_tokens, out.text_word_index, max_words)
        t["text_words"] = _per_example(words, batch_size)
        t["text_word_mask"] = _per_example(mask, batch_size)
        t["text_embeds"] = _per_example(out.text_embeds, batch_size)
        token_embeds = getattr(out, "text_token_embeds", None)
        if token_embeds is not None:
            word_embeds, _ = pool_words(token_embeds, out.text_word_index, max_words)
            t["text_word_embeds"] = _per_example(F.normalize(word_embeds, dim=-1), batch_size)
    return t


def fusion_targets(out: FusionTeacherOutput, batch_size: int, *, max_length: int) -> dict[str, torch.Tensor]:
    """Targets of a fusion teacher (DiDE): logits and last-layer cross-modal attention per view."""
    ca = out.cross_attention
    t2i = _pad_to(ca.text_to_image, 2, max_length)
    i2t = _pad_to(ca.image_to_text, 3, max_length)
    return {
        "logits": out.logits,
        "t2i": _per_example(t2i, batch_size),
        "i2t": _per_example(i2t, batch_size),
        "text_mask": _per_example(_pad_to(ca.text_mask, 1, max_length, False), batch_size),
        "image_mask": _per_example(ca.image_mask, batch_size),
    }


def candidate_targets(logits: torch.Tensor, mask: torch.Tensor, max_candidates: int) -> dict[str, torch.Tensor]:
    """Zero-shot candidate scores padded (or cut) to ``max_candidates`` columns."""
    return {
        "candidate_logits": _pad_to(logits, 1, max_candidates),
        "candidate_mask": _pad_to(mask, 1, max_candidates, False),
    }


@torch.no_grad()
def teacher_targets(
    teacher: torch.nn.Module,
    examples: Sequence[TaskExample],
    images: Sequence[Sequence[Image.Image]],
    *,
    max_words: int,
    max_candidates: int,
    candidates: bool,
) -> dict[str, torch.Tensor]:
    """Run a frozen teacher live on a batch and return its targets (on the teacher's device)."""
    out = teacher.encode(examples, images, candidates=True) if candidates else teacher.encode(examples, images)
    b = len(examples)
    if isinstance(out, FusionTeacherOutput):
        return fusion_targets(out, b, max_length=teacher.processor.max_length)
    targets = unimodal_targets(out, b, max_words=max_words)
    if candidates:
        assert out.candidate_logits is not None and out.candidate_mask is not None
        targets.update(candidate_targets(out.candidate_logits, out.candidate_mask, max_candidates))
    return targets


IMAGE_FIELDS = frozenset({"image_tokens", "image_embeds", "image_grid", "image_token_embeds"})
"""Fields of one image alone (``image_grid`` is per example in the targets, the same for every image)."""
TEXT_FIELDS = frozenset({"text_words", "text_word_mask", "text_embeds", "text_word_embeds"})
"""Fields of one text alone."""
DISTRIBUTION_FIELDS = frozenset({"t2i", "i2t"})
"""Fields whose rows (last dimension) are probability distributions: a fusion teacher's attention."""


@dataclass(frozen=True)
class TargetParts:
    """Which parts of its targets a teacher has, for the teacher cache.

    Attributes:
        image: per-image fields (``IMAGE_FIELDS``), computed by :func:`image_part`.
        text: per-text fields (``TEXT_FIELDS``), computed by :func:`text_part`.
        pair: per-example fields: ``"candidates"`` (zero-shot scores from the stored image
            embeddings, :func:`pair_part`), ``"live"`` (every target from the teacher run on the
            example: fusion teachers, whose attention and logits depend on the pair, and teachers of
            an unknown kind) or ``None``.
        derived: ``field -> (source field, linear map)``: fields that are ``normalize(map(source))``
            (CLIP's joint-space tokens, ``CLIPTeacher.token_projections``), derived instead of stored.
    """

    image: bool
    text: bool
    pair: str | None
    derived: dict[str, tuple[str, torch.nn.Linear]] = field(default_factory=dict)


def target_parts(teacher: torch.nn.Module, *, candidates: bool) -> TargetParts:
    """The parts of ``teacher``'s targets (by its ``kind``); ``candidates``: it scores zero-shot candidates."""
    kind = getattr(teacher, "kind", "")
    if kind not in ("clip", "vision", "text") or (candidates and not hasattr(teacher, "candidate_scores")):
        return TargetParts(False, False, "live")
    projections = teacher.token_projections() if hasattr(teacher, "token_projections") else {}
    return TargetParts(
        kind in ("clip", "vision"), kind in ("clip", "text"), "candidates" if candidates else None, projections
    )


def derive(source: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``normalize(source @ weight.T + bias)`` over the last dimension: a derived field of ``TargetParts``.

    ``weight`` ``(E, D)`` and ``bias`` ``(E,)`` are the linear map's (``torch.nn.Linear``); ``source`` ``(..., D)``.
    """
    weight = weight.to(source.device, torch.float32)
    bias = None if bias is None else bias.to(source.device, torch.float32)
    return F.normalize(F.linear(source.float(), weight, bias), dim=-1)


@torch.no_grad()
def image_part(
    teacher: torch.nn.Module, task: str, images: Sequence[Image.Image], *, max_words: int
) -> dict[str, torch.Tensor]:
    """``IMAGE_FIELDS`` of ``N`` images, each ``(N, ...)`` (``image_grid`` ``(N, 2)``).

    The teacher runs once on one example holding the ``N`` images and an empty text (its processor and
    forward as for any example: the tokens of an image do not depend on the text, nor on the other
    images of the batch beyond float rounding).
    """
    n = len(images)
    proxy = TaskExample("image-part", task, tuple(Path(str(i)) for i in range(n)), ("",))
    t = unimodal_targets(teacher.encode([proxy], [list(images)]), 1, max_words=max_words)
    return {k: v.expand(n, 2) if k == "image_grid" else v[0] for k, v in t.items() if k in IMAGE_FIELDS}


@torch.no_grad()
def text_part(teacher: torch.nn.Module, task: str, texts: Sequence[str], *, max_words: int) -> dict[str, torch.Tensor]:
    """``TEXT_FIELDS`` of ``N`` texts, each ``(N, ...)``: one example holding the texts and a blank image."""
    proxy = TaskExample("text-part", task, (Path("blank"),), tuple(texts))
    blank = Image.new("RGB", (8, 8))
    t = unimodal_targets(teacher.encode([proxy], [[blank]]), 1, max_words=max_words)
    return {k: v[0] for k, v in t.items() if k in TEXT_FIELDS}


@torch.no_grad()
def pair_part(
    teacher: torch.nn.Module,
    parts: TargetParts,
    examples: Sequence[TaskExample],
    images: Sequence[Sequence[Image.Image]] | None,
    image_embeds: torch.Tensor | None,
    *,
    max_words: int,
    max_candidates: int,
    candidates: bool,
) -> dict[str, torch.Tensor]:
    """The per-example fields of ``examples`` (``{}`` when ``parts.pair`` is None).

    ``"candidates"`` needs ``image_embeds`` ``(B, I, E)`` (the examples' stored image embeddings),
    ``"live"`` the decoded ``images`` (and scores candidates there when ``candidates``).
    """
    if parts.pair == "candidates":
        assert image_embeds is not None
        logits, mask = teacher.candidate_scores(examples, image_embeds)
        return candidate_targets(logits, mask, max_candidates)
    if parts.pair == "live":
        assert images is not None
        return teacher_targets(
            teacher, examples, images, max_words=max_words, max_candidates=max_candidates, candidates=candidates
        )
    return {}
