"""Per-instance weights of the distillation loss.

CLIP-TD (arXiv 2201.05729) uses "a dynamically weighted objective" and MAD (arXiv 2204.10496)
distils "adaptively"; neither abstract gives the formula. Our reading (the project's DESIGN.md,
switch ``method.weighting``: ``teacher_confidence``, ``student_confidence`` or ``constant``): an
instance is distilled in proportion to the teacher's zero-shot confidence in the gold answer, so a
teacher that is wrong or unsure about an instance teaches little on it. ``constant`` is the
naive-distillation baseline; ``student_confidence`` (the student's own detached probability of the
gold answer) serves teachers that cannot score answers (``vldistill.distill.methods``).
"""

from __future__ import annotations

import torch

from vldistill.errors import ConfigError


def global_mean(weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B,)`` weights over the global batch: every process's part under data parallelism.

    With ``torch.distributed`` initialised (DDP under accelerate, which splits each global batch
    across processes), the sum and count are all-reduced, so two processes normalise exactly as one
    process with the whole batch (up to float addition order); otherwise the plain mean. Every
    process must call it at the same point of the step (the methods' losses are).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            totals = torch.stack(
                [weights.detach().float().sum(), weights.new_tensor(weights.numel(), dtype=torch.float)]
            )
            torch.distributed.all_reduce(totals)
            return (totals[0] / totals[1]).to(weights.dtype)
    return weights.mean()


def normalize_weights(weights: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Rescale weights so that their mean over the batch is 1 (all-zero weights stay zero).

    Keeps the size of the distillation term independent of how confident the teacher is on average,
    so ``lambda`` means the same thing across tasks and weightings. ``mean`` defaults to the mean of
    ``weights``; pass :func:`global_mean` to normalise over the global batch under data parallelism.
    With gradient accumulation the batch is each accumulated micro-batch.

    Args:
        weights: ``(B,)`` non-negative.
        mean: scalar, the mean to divide by.

    Returns:
        ``(B,)``.

    Example:
        ``[0.2, 0.6]`` -> ``[0.5, 1.5]``; ``[0., 0.]`` -> ``[0., 0.]``.
    """
    mean = weights.mean() if mean is None else mean
    return torch.where(mean > 0, weights / mean.clamp(min=torch.finfo(weights.dtype).tiny), weights)


def confidence_weights(
    candidate_logits: torch.Tensor,
    candidate_mask: torch.Tensor,
    gold: torch.Tensor,
    *,
    temperature: float = 1.0,
    floor: float = 0.0,
    normalize: bool = False,
) -> torch.Tensor:
    """The teacher's zero-shot probability of the gold candidate, floored (CLIP-TD's dynamic weight).

    ``w_b = max(floor, softmax(candidate_logits[b, real] / temperature)[gold_b])``.

    ``gold_b == -1`` means the gold answer is not among the candidates (e.g. a VQA answer outside the
    candidate list): the teacher gives it probability 0, so the weight is ``floor``. We chose this
    over 1.0 because the weight measures how far the teacher can be trusted on this instance, and it
    cannot be shown to be right; set ``floor`` above 0 to keep distilling such instances a little.

    Args:
        candidate_logits: ``(B, K)`` teacher scores of each candidate (CLIP: already scaled by its
            logit scale, so ``temperature=1`` is CLIP's own zero-shot softmax).
        candidate_mask: ``(B, K)`` bool, real candidates; padded ones get probability 0.
        gold: ``(B,)`` long, index of the gold candidate, or -1.
        temperature: > 0; above 1 flattens the teacher's confidence.
        floor: in ``[0, 1]``, the smallest weight.
        normalize: rescale so the batch mean is 1 (:func:`normalize_weights`).

    Returns:
        ``(B,)`` float, detached: a weight scales the loss, it is not something to optimise.

    Example:
        logits ``[[2, 0, 7]]`` with the third candidate masked, gold 0:
        ``e^2 / (e^2 + e^0) = 0.8808``; gold 1 -> ``0.1192``; gold -1 with ``floor=0.1`` -> ``0.1``.
    """
    if temperature <= 0:
        raise ConfigError(f"weighting temperature={temperature} must be > 0; fix: use e.g. 1.0")
    if not 0 <= floor <= 1:
        raise ConfigError(f"weighting floor={floor} is outside [0, 1]; fix: use e.g. 0.0")
    logits = candidate_logits.detach().float() / temperature
    known = gold >= 0
    index = gold.clamp(min=0).unsqueeze(1)
    if bool((gold >= logits.shape[1]).any()) or not bool(candidate_mask.gather(1, index)[known].all()):
        raise ValueError("a gold index points past the candidates or at a padded candidate")
    # Rows without any real candidate (only possible with gold -1) would softmax to NaN: give them
    # zeros, their result is replaced by the floor below anyway.
    logits = logits.masked_fill(~candidate_mask, -torch.inf).masked_fill(~candidate_mask.any(1, keepdim=True), 0)
    gold_prob = logits.softmax(dim=1).gather(1, index).squeeze(1)
    weights = torch.where(known, gold_prob, torch.zeros_like(gold_prob)).clamp(min=floor)
    return normalize_weights(weights) if normalize else weights


def constant_weights(
    batch_size: int,
    value: float = 1.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The same weight for every instance (naive distillation).

    Returns:
        ``(batch_size,)`` filled with ``value``.

    Example:
        ``constant_weights(3)`` -> ``[1., 1., 1.]``.
    """
    return torch.full((batch_size,), value, device=device, dtype=dtype)
