"""A CLIP teacher's word-to-patch relevance as a target for the student's text-to-image attention.

This is a switch of the feature methods (``method.relevance_weight``, default 0), not a part of the
CLIP-TD (arXiv 2201.05729) or MAD (arXiv 2204.10496) objectives, and it is reported as its own row.
The idea joins two published ones:

- DiDE (arXiv 2112.08723) distils a fusion teacher's cross-modal *attention distributions* into a
  student, with a KL divergence per query over the other modality's keys.
- A CLIP teacher has no cross-attention, but its word and patch embeddings share one space, and
  FILIP-style training (arXiv 2111.07783) makes the cosine of a word with each patch say where that
  word is in the picture. Softmaxed over the patches (temperature ``tau``), it is a distribution of
  the same kind as a text query's attention over the image keys.

What it teaches is what a student fine-tuned on few labels lacks most in the demo's world: which
region a question's words refer to (``shared/notes/demo-feasibility.md``).

Shapes: ``N`` views, ``W`` words, ``P`` student patches, ``E`` the teacher's joint width,
``H`` heads, ``L`` student text tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from vldistill.distill.align import pool_grid, pool_words
from vldistill.distill.losses import ATTENTION_EPS
from vldistill.errors import ConfigError
from vldistill.models.outputs import StudentOutput


def teacher_relevance(
    word_embeds: torch.Tensor,
    patch_embeds: torch.Tensor,
    teacher_grid: tuple[int, int],
    student_grid: tuple[int, int],
    tau: float,
) -> torch.Tensor:
    """``(N, W, P)``: each word's softmax over the student's patch cells of its cosine with the teacher's patches.

    Args:
        word_embeds: ``(N, W, E)`` unit-norm word embeddings in the teacher's joint space.
        patch_embeds: ``(N, P_t, E)`` unit-norm patch embeddings on ``teacher_grid`` (row-major).
        teacher_grid, student_grid: ``(rows, cols)``; the teacher's patches are averaged onto the
            student's grid when it is coarser (``align.pool_grid``), then re-normalised.
        tau: softmax temperature (> 0); cosines lie in [-1, 1], so 0.05 turns a cosine gap of 0.1
            into a factor e^2 in probability.

    Example:
        One word equal to patch 0, orthogonal to patch 1, ``tau = 0.5``: ``softmax([2, 0]) = [0.881, 0.119]``.
    """
    if tau <= 0:
        raise ValueError(f"tau={tau} must be > 0")
    cells = patch_embeds
    if tuple(teacher_grid) != tuple(student_grid):
        cells = F.normalize(pool_grid(patch_embeds.float(), teacher_grid, student_grid), dim=-1)
    cosine = torch.einsum("nwe,npe->nwp", word_embeds.float(), cells.float())
    return (cosine / tau).softmax(dim=-1)


def student_word_attention(
    text_to_image: torch.Tensor, word_index: torch.Tensor, max_words: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's attention of each word over the image: heads averaged, word pieces averaged.

    Args:
        text_to_image: ``(N, H, L, P)`` each text token's attention over the image keys (rows sum to 1).
        word_index: ``(N, L)`` word of each token, -1 for special and padding tokens.
        max_words: ``W``, words kept (as the teacher's targets).

    Returns:
        ``(N, W, P)`` distributions (rows sum to 1, all zero for absent words) and ``(N, W)`` bool mask.
    """
    words, mask = pool_words(text_to_image.mean(dim=1), word_index, max_words)
    return words / words.sum(dim=-1, keepdim=True).clamp(min=ATTENTION_EPS), mask


def relevance_kl(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N,)``: per view, ``KL(teacher || student)`` summed over patches, averaged over the words ``mask``
    keeps (0 for a view with none).

    Args:
        teacher, student: ``(N, W, P)`` distributions over the patches.
        mask: ``(N, W)`` bool.

    Example:
        teacher ``[0.5, 0.5]``, student ``[0.25, 0.75]``: ``0.5 ln 2 + 0.5 ln(2/3) = 0.1438``.
    """
    if teacher.shape != student.shape or teacher.shape[:2] != mask.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)}, student {tuple(student.shape)}, mask {tuple(mask.shape)}")
    t = teacher.detach().float()
    kl = (torch.xlogy(t, t) - t * torch.log(student.float().clamp(min=ATTENTION_EPS))).sum(dim=-1)
    keep = mask.float()
    return (kl * keep).sum(dim=-1) / keep.sum(dim=-1).clamp(min=1)


def relevance_terms(
    out: StudentOutput,
    targets: Mapping[str, Mapping[str, torch.Tensor]],
    views: tuple[torch.Tensor, torch.Tensor],
    *,
    layer: int,
    temperature: float,
    max_words: int,
) -> dict[str, torch.Tensor]:
    """Per joint-space teacher, ``(B * V,)`` :func:`relevance_kl` of its word-to-patch relevance to the
    student's text-to-image attention of ``layer`` (-1: the last; ``k``: layer ``k``, 1-based).

    Args:
        out: the student's output (a fusion student: it has ``layer_cross_attention``).
        targets: teacher name -> targets (``vldistill.distill.targets``); teachers with
            ``text_word_embeds`` and ``image_token_embeds`` (CLIP) are used, the others ignored.
        views: ``(img_ix, txt_ix)``, ``(B * V,)`` each: the image and text row of every view.

    Raises:
        ConfigError: no teacher has a joint image-text space, the student has no joint attention
            (the dual encoder), or ``layer`` is past the student's last layer.
    """
    joint = {n: t for n, t in targets.items() if "text_word_embeds" in t and "image_token_embeds" in t}
    if not joint:
        raise ConfigError(
            "method.relevance_weight > 0 needs a teacher with a joint image-text space (kind: clip); "
            "fix: add one or set method.relevance_weight to 0"
        )
    if out.layer_cross_attention is None or out.text_hidden_states is None:
        raise ConfigError(
            "method.relevance_weight > 0 needs a fusion student (its text-to-image attention); "
            "fix: set student.kind to fusion or method.relevance_weight to 0"
        )
    layers = len(out.text_hidden_states) - 1
    chosen = layers if layer == -1 else layer
    if chosen > layers:
        raise ConfigError(
            f"method.relevance_layer {layer}, but the student has {layers} layers; fix: use 1 to {layers} or -1"
        )
    img_ix, txt_ix = views
    attention = out.layer_cross_attention(chosen).text_to_image
    student, student_mask = student_word_attention(attention, out.text_word_index, max_words)
    terms = {}
    for name, t in joint.items():
        grid = (int(t["image_grid"][0, 0]), int(t["image_grid"][0, 1]))
        teacher = teacher_relevance(
            t["text_word_embeds"].flatten(0, 1)[txt_ix],
            t["image_token_embeds"].flatten(0, 1)[img_ix],
            grid,
            out.image_grid,
            temperature,
        )
        terms[name] = relevance_kl(teacher, student, student_mask & t["text_word_mask"].flatten(0, 1)[txt_ix])
    return terms
