"""Distillation building blocks: pure tensor functions that the methods (none, kd, clip_td, mad, dide)
combine.

The CLIP-TD / MAD feature term for one teacher and one modality reads::

    teacher_tokens = pool_grid(teacher.image_tokens, teacher.image_grid, student.image_grid)
    scores = relevance(teacher_tokens_in_embedding_space, teacher.text_embeds)
    chosen = selection_mask("teacher_relevance", mask=student.image_mask, teacher_scores=scores, ratio=0.5)
    weights = confidence_weights(teacher.candidate_logits, teacher.candidate_mask, gold, floor=0.1)
    distances = feature_distance(project(student.image_tokens), teacher_tokens, chosen, "l1")
    loss = weighted_feature_loss(distances, weights.repeat_interleave(V))  # V views per example

and DiDE's attention term is ``attention_kl(teacher.cross_attention.text_to_image,
student.cross_attention.text_to_image, text_mask, image_mask)``.
"""

from vldistill.distill.align import pool_grid, pool_words
from vldistill.distill.losses import (
    attention_kl,
    feature_distance,
    logit_kd,
    renormalize,
    weighted_feature_loss,
)
from vldistill.distill.selection import (
    TokenSelection,
    head_mean_cls_scores,
    keep_count,
    relevance,
    select_tokens,
    selection_mask,
)
from vldistill.distill.weighting import confidence_weights, constant_weights, normalize_weights

__all__ = [
    "TokenSelection",
    "attention_kl",
    "confidence_weights",
    "constant_weights",
    "feature_distance",
    "head_mean_cls_scores",
    "keep_count",
    "logit_kd",
    "normalize_weights",
    "pool_grid",
    "pool_words",
    "relevance",
    "renormalize",
    "select_tokens",
    "selection_mask",
    "weighted_feature_loss",
]
