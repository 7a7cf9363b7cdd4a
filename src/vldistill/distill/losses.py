"""Distillation losses on aligned tensors: token features, logits and attention distributions.

Conventions: the teacher side is a constant target (detached inside each loss), and the arithmetic is
done in float32 whatever the input dtype, because KL and log terms lose too much in half precision.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

FeatureDistance = Literal["l1", "l2", "cosine"]
LogitKind = Literal["softmax", "sigmoid"]
ClassReduction = Literal["sum", "mean"]

# Smallest student probability inside a log: a teacher that puts mass where the student puts none
# gives a large but finite loss and gradient.
ATTENTION_EPS = 1e-8


def feature_distance(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, kind: FeatureDistance
) -> torch.Tensor:
    """Per-instance mean distance between student and teacher tokens over the selected tokens.

    The feature loss of naive distillation, CLIP-TD (arXiv 2201.05729) and MAD (arXiv 2204.10496),
    which name no distance; ours is the ``method.feature_loss`` switch.

    Args:
        student: ``(N, K, D)`` student tokens, already projected to the teacher's width ``D``.
        teacher: ``(N, K, D)`` aligned teacher tokens.
        mask: ``(N, K)`` bool, the selected tokens.
        kind: per token, ``l1`` = mean over D of ``|s - t|``; ``l2`` = mean over D of ``(s - t)^2``;
            ``cosine`` = ``1 - cos(s, t)``.

    Returns:
        ``(N,)`` the mean over each instance's selected tokens; 0 for an instance with none. Only the
        selected tokens are computed on, so the others get exactly zero gradient (never NaN).

    Example:
        ``student[0] = [[1, 2], [0, 0]]``, ``teacher[0] = [[0, 0], [5, 5]]``, ``mask[0] = [True, False]``:
        l1 -> ``(1 + 2) / 2 = 1.5``; l2 -> ``(1 + 4) / 2 = 2.5``; cosine -> ``1 - 0 = 1`` (teacher
        token 0 is a zero vector, whose cosine ``F.cosine_similarity`` takes as 0).
    """
    if student.shape != teacher.shape or student.shape[:2] != mask.shape:
        raise ValueError(
            f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)} and mask {tuple(mask.shape)} disagree"
        )
    s = student[mask].float()
    t = teacher.detach()[mask].float()
    if kind == "l1":
        per_token = (s - t).abs().mean(dim=-1)
    elif kind == "l2":
        per_token = (s - t).pow(2).mean(dim=-1)
    elif kind == "cosine":
        per_token = 1 - F.cosine_similarity(s, t, dim=-1)
    else:
        raise ValueError(f"unknown feature distance '{kind}'; use l1, l2 or cosine")
    n = mask.shape[0]
    instance = torch.arange(n, device=mask.device).unsqueeze(1).expand_as(mask)[mask]
    sums = per_token.new_zeros(n).index_add(0, instance, per_token)
    return sums / mask.sum(dim=1).clamp(min=1)


def weighted_feature_loss(per_instance: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Batch mean of weighted per-instance distances.

    Args:
        per_instance: ``(N,)`` from :func:`feature_distance`.
        weights: ``(N,)`` from :mod:`~vldistill.distill.weighting` (detached here).

    Returns:
        scalar ``mean(weights * per_instance)``.

    Example:
        ``per_instance = [2, 4]``, ``weights = [0.5, 0]`` -> ``(1 + 0) / 2 = 0.5``.
    """
    if per_instance.shape != weights.shape:
        raise ValueError(f"per_instance {tuple(per_instance.shape)} and weights {tuple(weights.shape)} disagree")
    return (weights.detach().to(per_instance.dtype) * per_instance).mean()


def logit_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    kind: LogitKind,
    temperature: float,
    classes: ClassReduction = "mean",
) -> torch.Tensor:
    """Logit distillation (Hinton et al. 2015; DiDE's soft labels, arXiv 2112.08723).

    Args:
        student_logits, teacher_logits: ``(B, C)``.
        kind: ``softmax`` (classification: VE, NLVR2, VCR candidates):
            ``T^2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))``.
            ``sigmoid`` (independent binary labels: VQA's answers, as DiDE; matching scores):
            ``T^2 * BCE(sigmoid(s / T), sigmoid(t / T))`` per class, combined over the ``C`` classes
            by ``classes`` and averaged over the batch. It is not 0 when the student matches: the
            minimum is the targets' entropy.
        temperature: ``T`` > 0, applied to both student and teacher logits.
        classes: sigmoid only, how the ``C`` per-class terms combine: ``sum`` for VQA soft labels,
            the scale of the VQA task loss (``vldistill.models.heads.task_loss``: ViLT's BCE mean x
            number of answers, i.e. sum over answers, mean over the batch; DiDE's reference does the
            same), so that ``logit_weight`` 1 weighs soft labels like the task loss; ``mean`` (the
            default, for callers such as DiDE pre-training's ITM scores) averages them. With 3,129
            answers ``mean`` is 3,129 times smaller than ``sum``. The softmax KL always sums over
            classes.

    The ``T^2`` factor (Hinton's convention, here for both kinds) keeps gradient sizes independent of
    ``T``: the gradient per logit is ``T * (p_s - p_t)`` with ``p = softmax or sigmoid(z / T)``, and
    for large ``T`` ``p_s - p_t`` shrinks like ``(s - t) / T`` (sigmoid: ``sigmoid(z / T) ~ 1/2 + z / 4T``),
    so the gradient tends to ``(s - t) / 4`` per answer for sigmoid (``(s - t - mean) / C`` for
    softmax), whatever ``T``. At ``T = 1`` both kinds are the plain losses.

    Returns:
        scalar.

    Example:
        ``s = [[0, 0]]``, ``t = [[ln 3, 0]]``, softmax, ``T = 1``: teacher ``[0.75, 0.25]``, student
        ``[0.5, 0.5]`` -> ``0.75 ln 1.5 + 0.25 ln 0.5 = 0.1308``.
        ``s = [[0, 0]]``, ``t = [[0, 0]]``, sigmoid: targets 0.5 -> ``ln 2 = 0.6931`` per answer:
        ``0.6931`` with ``classes="mean"``, ``1.3863`` with ``classes="sum"``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} disagree"
        )
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    if kind == "softmax":
        kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
        return kl * temperature**2
    if kind == "sigmoid":
        per_class = F.binary_cross_entropy_with_logits(s, torch.sigmoid(t), reduction="none")
        if classes == "sum":
            per_example = per_class.sum(dim=-1)
        elif classes == "mean":
            per_example = per_class.mean(dim=-1)
        else:
            raise ValueError(f"unknown class reduction '{classes}'; use sum or mean")
        return per_example.mean() * temperature**2
    raise ValueError(f"unknown logit distillation kind '{kind}'; use softmax or sigmoid")


def _key_mask_like(key_mask: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` key mask viewed as ``(N, 1, ..., 1, K)`` to broadcast against ``attn`` ``(N, ..., K)``."""
    if key_mask.dim() == attn.dim():
        return key_mask
    return key_mask.view(key_mask.shape[0], *([1] * (attn.dim() - 2)), key_mask.shape[-1])


def renormalize(attn: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded keys of attention distributions and rescale each row to sum to 1.

    Used to cut a modality's block out of a joint attention (DiDE's teacher: the text-to-image block
    of ViLT's attention is re-normalised over the real image keys).

    Args:
        attn: ``(N, ..., K)`` non-negative, e.g. ``(N, H, Q, K)``.
        key_mask: ``(N, K)``, or any bool shape broadcastable to ``attn``: real keys.

    Returns:
        same shape as ``attn``; rows with no real key (or no mass on them) are all zeros.

    Example:
        ``[0.2, 0.3, 0.5]`` with keys ``[True, True, False]`` -> ``[0.4, 0.6, 0.0]``.
    """
    kept = attn.masked_fill(~_key_mask_like(key_mask, attn), 0)
    total = kept.sum(dim=-1, keepdim=True)
    return kept / total.clamp(min=torch.finfo(kept.dtype).tiny)


def attention_kl(
    teacher: torch.Tensor, student: torch.Tensor, query_mask: torch.Tensor, key_mask: torch.Tensor
) -> torch.Tensor:
    """DiDE's cross-modal attention distillation loss (arXiv 2112.08723).

    ``KL(teacher || student) = sum over real keys of t * (log t - log max(s, eps))`` per instance, head
    and query (``0 * log 0 = 0``), then the mean over every real query of every head of every instance
    in the batch. Padded queries and padded keys contribute nothing whatever their values: the
    reference implementation averages over padded queries too, which shrinks the loss of short texts;
    we do not copy that flaw. Both inputs should be distributions over the real keys
    (:func:`renormalize`).

    Args:
        teacher: ``(N, H, Q, K)`` teacher attention probabilities (a constant target).
        student: ``(N, H, Q, K)`` student attention probabilities.
        query_mask: ``(N, Q)`` bool, real queries.
        key_mask: ``(N, K)`` bool, real keys.

    Returns:
        scalar; 0 when the batch has no real query.

    Example:
        One instance, one head, queries ``[real, padded]``, keys ``[real, real, padded]``; query 0:
        teacher ``[0.5, 0.5, 0]``, student ``[0.25, 0.75, 0]`` ->
        ``0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln(4 / 3) = 0.1438``; query 1 ignored.
    """
    if teacher.shape != student.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)} disagree")
    n, heads, queries, keys = student.shape
    if query_mask.shape != (n, queries) or key_mask.shape != (n, keys):
        raise ValueError(f"query_mask {tuple(query_mask.shape)} or key_mask {tuple(key_mask.shape)} do not fit")
    real = query_mask[:, None, :, None] & key_mask[:, None, None, :]
    # Fill padded positions before any log (t = 0, s = 1): their terms are exactly 0 and their values,
    # even NaN, reach neither the loss nor the gradient.
    t = teacher.detach().float().masked_fill(~real, 0)
    s = student.float().masked_fill(~real, 1)
    kl = torch.xlogy(t, t) - t * torch.log(s.clamp(min=ATTENTION_EPS))
    n_real_queries = query_mask.sum() * heads
    return kl.sum() / n_real_queries.clamp(min=1)
