"""Typed outputs shared by students and teachers (shapes in every docstring).

Notation: ``B`` examples, ``V`` views per example (see ``vldistill.data.examples``), ``I`` images
per example, ``T`` texts per example, ``L`` text tokens, ``P`` image tokens, ``D`` hidden size,
``H`` attention heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class ModelInputs:
    """What a processor makes of a list of ``TaskExample`` for one model.

    Attributes:
        pixel_values: ``(B * I, 3, height, width)`` float, the model's own image size and norm.
        input_ids: ``(B * T, L)`` long.
        attention_mask: ``(B * T, L)`` long, 1 for real tokens.
        word_index: ``(B * T, L)`` long, index of the whitespace-separated word of the text that
            each token belongs to (from the tokenizer's character offsets), -1 for special and
            padding tokens. Lets features of models with different tokenizers be aligned by word.
        n_images: images per example ``I``; n_texts: texts per example ``T``; task: the task name.
    """

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_index: torch.Tensor
    n_images: int
    n_texts: int
    task: str

    @property
    def batch_size(self) -> int:
        return self.pixel_values.shape[0] // self.n_images

    def to(self, device: torch.device | str) -> ModelInputs:
        return ModelInputs(
            self.pixel_values.to(device),
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.word_index.to(device),
            self.n_images,
            self.n_texts,
            self.task,
        )


@dataclass
class CrossModalAttention:
    """Last-layer cross-modal attention distributions (DiDE), per view.

    Attributes:
        text_to_image: ``(B * V, H, L, P)``, each text query's distribution over image keys (rows
            sum to 1 over the image keys that ``image_mask`` marks real).
        image_to_text: ``(B * V, H, P, L)``, each image query's distribution over text keys.
        text_mask: ``(B * V, L)`` bool, real (non-padded) text positions.
        image_mask: ``(B * V, P)`` bool, real image positions.
    """

    text_to_image: torch.Tensor
    image_to_text: torch.Tensor
    text_mask: torch.Tensor
    image_mask: torch.Tensor


@dataclass
class StudentOutput:
    """Output of a student (fusion or dual encoder) on a batch.

    Attributes:
        logits: ``(B, C)``: C = answer vocabulary (vqa), 3 (snli_ve), 4 candidates (vcr), 2 (nlvr2).
        text_tokens: ``(B * V, L, D)`` last-layer features of the text tokens of each view.
        text_mask: ``(B * V, L)`` bool, real text tokens (no padding).
        text_word_index: ``(B * V, L)`` long, word of each text token, -1 for special/padding.
        image_tokens: ``(B * V, P, D)`` last-layer features of the image patch tokens of each view
            (no [CLS]), laid out row-major on ``image_grid``.
        image_mask: ``(B * V, P)`` bool.
        image_grid: ``(rows, cols)`` of the patch grid, ``rows * cols == P``.
        pooled: ``(B * V, D)`` the pooled vector of each view (fusion: [CLS]; dual: fused vector).
        cls_attention: ``(B * V, H, L + P)`` or None: last-layer attention of the [CLS] query over
            text then image tokens (fusion students; used by the ``student_cls`` token selection).
        cross_attention: last-layer cross-modal attention, when requested (DiDE).
        text_hidden_states: fusion students: ``N + 1`` tensors ``(B * V, L, D)``, the text tokens of
            transformers' ``hidden_states`` (index 0 the embeddings, ``k`` the output of layer ``k``,
            before ViLT's final LayerNorm); None for students without per-layer tokens.
        image_hidden_states: likewise ``(B * V, P, D)`` for the image patch tokens (no [CLS]).
        layer_cross_attention: fusion students: a function of the layer ``k`` (1-based) returning
            that layer's :class:`CrossModalAttention` (computed on demand from the attention maps the
            forward pass already holds); None for students without a joint attention.
    """

    logits: torch.Tensor
    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    text_word_index: torch.Tensor
    image_tokens: torch.Tensor
    image_mask: torch.Tensor
    image_grid: tuple[int, int]
    pooled: torch.Tensor
    cls_attention: torch.Tensor | None = None
    cross_attention: CrossModalAttention | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    layer_cross_attention: Callable[[int], CrossModalAttention] | None = None


@dataclass
class UnimodalTeacherOutput:
    """Output of a frozen unimodal teacher (CLIP tower, a vision backbone, a text encoder).

    Image side (None for text-only teachers):
        image_tokens: ``(B * I, P_t, D_t)`` patch / feature-map tokens (no [CLS]), row-major on
            ``image_grid``; image_embeds: ``(B * I, E)`` pooled (and, for CLIP, projected) vector.
    Text side (None for image-only teachers):
        text_tokens: ``(B * T, L_t, D_t)``; text_mask: ``(B * T, L_t)`` bool;
        text_word_index: ``(B * T, L_t)`` long; text_embeds: ``(B * T, E)``.
    candidate_logits: ``(B, K)`` zero-shot scores of each example's candidates against its image
        (CLIP only; scaled by CLIP's logit scale), ``candidate_mask`` ``(B, K)`` bool for real ones.
    """

    image_tokens: torch.Tensor | None = None
    image_grid: tuple[int, int] | None = None
    image_embeds: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    text_word_index: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    candidate_logits: torch.Tensor | None = None
    candidate_mask: torch.Tensor | None = None


@dataclass
class FusionTeacherOutput:
    """Output of a frozen fine-tuned fusion teacher (ViLT) for DiDE.

    Attributes:
        logits: ``(B, C)`` task logits (same head layout as the student's).
        cross_attention: the last layer's cross blocks of the joint attention, each re-normalised
            over the other modality's real keys, per view.
        matching_logits: ``(B * V,)`` image-text matching score (pre-training stage), or None.
    """

    logits: torch.Tensor
    cross_attention: CrossModalAttention
    matching_logits: torch.Tensor | None = None
