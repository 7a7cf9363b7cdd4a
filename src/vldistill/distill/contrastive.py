"""Contrastive image-text losses for pre-training a CLIP-like teacher: CLIP's and FILIP's, with hard negatives.

- :func:`clip_loss`: CLIP's symmetric InfoNCE on pooled embeddings (Radford et al. 2021, arXiv 2103.00020).
- :func:`token_similarity` / :func:`filip_loss`: FILIP's token-wise late interaction (Yao et al. 2021,
  arXiv 2111.07783): the similarity of an image and a text is the mean over the text's words of each
  word's best cosine with any patch (and symmetrically over patches). Trained with it, a word's
  embedding lands near the patches it names: the word-to-patch *relevance* that CLIP-TD's token
  selection and ``method.relevance_weight`` read.
- :func:`swap_word_negatives`: a hard negative caption per caption, one attribute word replaced by
  another of its group ("a red circle" -> "a blue circle"); scored against the caption's own image
  as an extra negative, it forces the encoders to bind attributes to objects instead of matching
  bags of words (NegCLIP, Yuksekgonul et al. 2023, arXiv 2210.01936, trains with swapped captions).

Shapes: ``B`` images / texts, ``P`` patches, ``L`` text tokens, ``E`` the joint width; every
embedding is unit norm.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: mean of image->text and text->image cross-entropy.

    ``image_embeds``, ``text_embeds``: ``(B, E)`` unit norm, row i of each a matching pair;
    ``logit_scale``: scalar log of the inverse temperature.
    """
    logits = logit_scale.exp() * image_embeds @ text_embeds.T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def token_similarity(patches: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """``(B_i, B_t)`` FILIP similarity: per (image, text), the mean over real words of the word's best
    cosine with any patch.

    Args:
        patches: ``(B_i, P, E)`` unit-norm patch embeddings.
        words: ``(B_t, L, E)`` unit-norm token embeddings.
        word_mask: ``(B_t, L)`` bool, the tokens that count (real words: no padding, no [CLS]/[SEP]).

    Example:
        one image with patches ``e0, e1``; one text whose words are ``e0`` and ``(e0 + e1) / sqrt 2``:
        ``(1 + 0.7071) / 2 = 0.8536``.
    """
    best = torch.einsum("ipe,tle->itlp", patches, words).max(dim=-1).values  # (B_i, B_t, L)
    keep = word_mask.to(best.dtype)[None]
    return (best * keep).sum(-1) / keep.sum(-1).clamp(min=1)


def paired_token_similarity(patches: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)``: :func:`token_similarity` of image ``b`` with text ``b`` only (the diagonal, computed alone)."""
    best = torch.einsum("bpe,ble->blp", patches, words).max(dim=-1).values
    keep = word_mask.to(best.dtype)
    return (best * keep).sum(-1) / keep.sum(-1).clamp(min=1)


def filip_loss(
    patches: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    logit_scale: torch.Tensor,
    negative_words: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FILIP's symmetric InfoNCE on :func:`token_similarity`, with optional hard negatives.

    With ``negative_words`` ``(B, L', E)`` (one hard negative text per image, ``negative_mask``
    ``(B, L')``), the image-to-text direction scores each image against all ``B`` texts plus its own
    negative: ``B + 1`` classes.
    """
    sims = logit_scale.exp() * token_similarity(patches, words, word_mask)
    target = torch.arange(len(sims), device=sims.device)
    image_to_text = sims
    if negative_words is not None:
        assert negative_mask is not None
        hard = logit_scale.exp() * paired_token_similarity(patches, negative_words, negative_mask)
        image_to_text = torch.cat([sims, hard[:, None]], dim=1)
    return (F.cross_entropy(image_to_text, target) + F.cross_entropy(sims.T, target)) / 2


def clip_loss_with_negatives(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, negative_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """:func:`clip_loss` where each image also scores its own hard negative text (``(B, E)``)."""
    logits = logit_scale.exp() * image_embeds @ text_embeds.T
    hard = logit_scale.exp() * (image_embeds * negative_embeds).sum(-1, keepdim=True)
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(torch.cat([logits, hard], dim=1), target) + F.cross_entropy(logits.T, target)) / 2


_WORD = re.compile(r"[A-Za-z]+")


def swap_word_negatives(
    texts: Sequence[str], groups: Sequence[Sequence[str]], rng: np.random.Generator
) -> list[str | None]:
    """Per text, a copy with one word of a group replaced by another word of the same group.

    A word counts in its singular or plural (``circles`` -> ``squares``) and keeps its capital. The
    word to replace is drawn uniformly among the text's group words; None for a text with none.

    >>> swap_word_negatives(["A red circle."], [["red", "blue"]], np.random.default_rng(0))
    ['A blue circle.']
    """
    lookup: dict[str, tuple[int, bool]] = {}
    for g, words in enumerate(groups):
        for w in words:
            lookup[w] = (g, False)
            lookup.setdefault(w + "s", (g, True))
    out: list[str | None] = []
    for text in texts:
        spots = [m for m in _WORD.finditer(text) if m.group(0).lower() in lookup]
        if not spots:
            out.append(None)
            continue
        m = spots[int(rng.integers(len(spots)))]
        word = m.group(0)
        g, plural = lookup[word.lower()]
        base = word.lower()[:-1] if plural else word.lower()
        others = [w for w in groups[g] if w != base]
        new = others[int(rng.integers(len(others)))] + ("s" if plural else "")
        if word[0].isupper():
            new = new[0].upper() + new[1:]
        out.append(text[: m.start()] + new + text[m.end() :])
    return out
