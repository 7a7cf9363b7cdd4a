"""Per-instance token selection: which aligned tokens the feature distillation loss looks at.

CLIP-TD (arXiv 2201.05729) applies its objective "to adaptively selected tokens per instance" and MAD
(arXiv 2204.10496) does the same for each unimodal teacher; the abstracts do not say how tokens are
scored. Our reading (``/work/shared/DESIGN.md``), switchable with ``method.selection``:

- ``teacher_relevance`` (default): score each teacher image token by its cosine similarity to the
  teacher's embedding of the text, and each text token by its similarity to the image embedding.
- ``student_cls``: score each token by the attention the student's [CLS] query pays to it, averaged
  over heads.
- ``all``: every real token (the naive-distillation baseline).

How many tokens are kept is ``method.top_k`` (a count) or ``method.ratio`` (a share of the real
tokens, rounded up, at least one).
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
import torch.nn.functional as F

from vldistill.errors import ConfigError

# ratio * count is rounded up, but 0.3 * 10 is 3.0000000000000004 in floating point: without this
# slack ceil() would keep 4 tokens instead of 3.
_RATIO_SLACK = 1e-6


class TokenSelection(StrEnum):
    """Names of the token selection strategies (the ``method.selection`` config switch)."""

    TEACHER_RELEVANCE = "teacher_relevance"
    STUDENT_CLS = "student_cls"
    ALL = "all"


def relevance(tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each token to the instance's query vector.

    Args:
        tokens: ``(N, K, E)`` in the same space as ``query`` (for CLIP: patch tokens after the
            post-layernorm and the visual projection; text tokens after the text projection).
        query: ``(N, E)`` the other modality's embedding of the same instance.

    Returns:
        ``(N, K)`` in ``[-1, 1]``; a zero vector scores 0 (``F.normalize`` guards the division).

    Example:
        ``tokens[0] = [[1, 0], [0, 2], [1, 1]]``, ``query[0] = [3, 0]`` -> ``[1, 0, 1/sqrt(2)]``.
    """
    return torch.einsum("nke,ne->nk", F.normalize(tokens, dim=-1), F.normalize(query, dim=-1))


def keep_count(real: torch.Tensor, *, k: int | None = None, ratio: float | None = None) -> torch.Tensor:
    """How many tokens each instance keeps, given its number of real tokens.

    Args:
        real: ``(N,)`` long, the number of real tokens per instance.
        k: keep ``min(k, real)``; or ratio: keep ``ceil(ratio * real)``, at least 1 (0 when
            ``real == 0``). Exactly one of the two.

    Returns:
        ``(N,)`` long.

    Example:
        ``real = [10, 2, 0]``: ``k=3`` -> ``[3, 2, 0]``; ``ratio=0.3`` -> ``[3, 1, 0]``.
    """
    if (k is None) == (ratio is None):
        raise ConfigError("token selection needs exactly one of k and ratio; fix: set one of them")
    if k is not None:
        if k < 1:
            raise ConfigError(f"token selection k={k} keeps nothing; fix: use k >= 1")
        return real.clamp(max=k)
    if not 0 < ratio <= 1:
        raise ConfigError(f"token selection ratio={ratio} is outside (0, 1]; fix: use e.g. 0.5")
    kept = torch.ceil(real.to(torch.float64) * ratio - _RATIO_SLACK).long().clamp(min=1)
    return torch.minimum(kept, real)


def select_tokens(
    scores: torch.Tensor, mask: torch.Tensor, *, k: int | None = None, ratio: float | None = None
) -> torch.Tensor:
    """Per instance, keep the highest-scoring real tokens.

    Args:
        scores: ``(N, K)`` higher is more relevant; NaN counts as the lowest score.
        mask: ``(N, K)`` bool, real tokens. Masked tokens are never selected.
        k: keep the top ``k`` real tokens (all of them if there are fewer); or
        ratio: keep ``ceil(ratio * number of real tokens)``, at least 1. Exactly one of the two.

    Returns:
        ``(N, K)`` bool, a subset of ``mask``. Ties go to the lower index.

    Example:
        ``scores = [[0.1, 0.9, 0.5, 0.9]]``, ``mask = [[True, True, True, False]]``, ``k=2`` ->
        ``[[False, True, True, False]]`` (index 3 scores 0.9 but is padding).
    """
    if scores.shape != mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} disagree")
    n_keep = keep_count(mask.sum(dim=1), k=k, ratio=ratio)
    scores = torch.nan_to_num(scores.detach().float(), nan=-math.inf)
    # Rank by (real first, higher score, lower index): sort by score, then stably by realness, so
    # equal scores keep their index order and -inf real tokens still beat any padding.
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices
    by_real = torch.sort(mask.gather(1, by_score).to(torch.uint8), dim=1, descending=True, stable=True)
    order = by_score.gather(1, by_real.indices)
    rank = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)
    return torch.zeros_like(mask).scatter(1, order, rank < n_keep.unsqueeze(1))


def head_mean_cls_scores(cls_attention: torch.Tensor, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a fusion student's [CLS] attention into text and image token scores.

    Args:
        cls_attention: ``(N, H, L + P)`` last-layer attention of the [CLS] query over the text tokens
            then the image tokens (``StudentOutput.cls_attention``).
        text_length: ``L``.

    Returns:
        ``(N, L)`` text scores and ``(N, P)`` image scores, averaged over the ``H`` heads.

    Example:
        ``H = 2``, ``L = 1``, ``P = 2``, heads ``[0.2, 0.5, 0.3]`` and ``[0.4, 0.1, 0.5]`` ->
        text ``[[0.3]]``, image ``[[0.3, 0.4]]``.
    """
    scores = cls_attention.mean(dim=1)
    return scores[:, :text_length], scores[:, text_length:]


def selection_mask(
    strategy: TokenSelection | str,
    *,
    mask: torch.Tensor,
    teacher_scores: torch.Tensor | None = None,
    student_cls_scores: torch.Tensor | None = None,
    k: int | None = None,
    ratio: float | None = None,
) -> torch.Tensor:
    """The tokens to distil for one modality, by strategy name.

    Args:
        strategy: a :class:`TokenSelection` name.
        mask: ``(N, K)`` bool, real aligned tokens (e.g. the word mask of :func:`~.align.pool_words`).
        teacher_scores: ``(N, K)`` teacher relevance (:func:`relevance`), for ``teacher_relevance``.
        student_cls_scores: ``(N, K)`` head-averaged [CLS] attention (:func:`head_mean_cls_scores`),
            for ``student_cls``.
        k, ratio: how many to keep (see :func:`select_tokens`); ignored by ``all``.

    Returns:
        ``(N, K)`` bool.

    Example:
        ``selection_mask("all", mask=m)`` is ``m``;
        ``selection_mask("teacher_relevance", mask=m, teacher_scores=s, k=2)`` is
        ``select_tokens(s, m, k=2)``.
    """
    try:
        strategy = TokenSelection(strategy)
    except ValueError:
        names = ", ".join(s.value for s in TokenSelection)
        raise ConfigError(f"unknown token selection strategy '{strategy}'; fix: use one of {names}") from None
    if strategy is TokenSelection.ALL:
        return mask.clone()
    scores = teacher_scores if strategy is TokenSelection.TEACHER_RELEVANCE else student_cls_scores
    if scores is None:
        raise ValueError(f"token selection '{strategy.value}' needs its scores")
    return select_tokens(scores, mask, k=k, ratio=ratio)
