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
"""

from __future__ import annotations

from collections.abc import Sequence

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
