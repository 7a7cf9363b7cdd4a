"""Contrastive losses for pre-training a CLIP-like teacher: CLIP, FILIP late interaction, hard negatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vldistill.distill.contrastive import (
    clip_loss,
    clip_loss_with_negatives,
    filip_loss,
    paired_token_similarity,
    swap_word_negatives,
    token_similarity,
)


def test_token_similarity_is_the_mean_over_words_of_the_best_patch() -> None:
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    patches = torch.stack([e0, e1])[None]  # one image, two patches
    words = torch.stack([e0, F.normalize(e0 + e1, dim=0), e1])[None]  # third word masked out
    mask = torch.tensor([[True, True, False]])
    assert token_similarity(patches, words, mask).item() == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert paired_token_similarity(patches, words, mask).item() == pytest.approx((1 + math.sqrt(0.5)) / 2)


def test_paired_similarity_is_the_diagonal_of_the_full_matrix() -> None:
    torch.manual_seed(0)
    patches = F.normalize(torch.randn(4, 6, 8), dim=-1)
    words = F.normalize(torch.randn(4, 5, 8), dim=-1)
    mask = torch.rand(4, 5) > 0.3
    full = token_similarity(patches, words, mask)
    assert torch.allclose(paired_token_similarity(patches, words, mask), full.diagonal(), atol=1e-6)


def test_a_hard_negative_adds_one_class_to_the_image_side() -> None:
    # two orthogonal pairs; the negative text equals the image's own text: the image cannot tell them apart
    e = torch.eye(2)
    loss = clip_loss_with_negatives(e, e, e.clone(), torch.tensor(0.0))
    # image->text: logits [1, 0, 1] -> -log(e / (2e + 1)); text->image: log(1 + e^-1)
    expected = (-math.log(math.e / (2 * math.e + 1)) + math.log(1 + math.exp(-1))) / 2
    assert loss.item() == pytest.approx(expected)
    assert clip_loss(e, e, torch.tensor(0.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_filip_loss_with_and_without_negatives() -> None:
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    patches = torch.stack([e0[None], e1[None]])  # (2 images, 1 patch, 2)
    words = torch.stack([e0[None], e1[None]])  # (2 texts, 1 word, 2)
    mask = torch.ones(2, 1, dtype=torch.bool)
    base = filip_loss(patches, words, mask, torch.tensor(0.0))
    assert base.item() == pytest.approx(math.log(1 + math.exp(-1)))
    flipped = torch.stack([e1[None], e0[None]])  # each image's negative is the other's text
    with_negatives = filip_loss(patches, words, mask, torch.tensor(0.0), flipped, mask)
    assert with_negatives.item() == pytest.approx((-math.log(math.e / (math.e + 2)) + math.log(1 + math.exp(-1))) / 2)


def test_swap_word_negatives_keeps_number_and_capital() -> None:
    groups = [["red", "blue", "green"], ["circle", "square"]]
    rng = np.random.default_rng(0)
    out = swap_word_negatives(["Two circles.", "Red.", "Nothing here.", "a red star"], groups, rng)
    assert out[0] == "Two squares."
    assert out[1] in ("Blue.", "Green.")
    assert out[2] is None
    assert out[3] in ("a blue star", "a green star")
    again = swap_word_negatives(
        ["Two circles.", "Red.", "Nothing here.", "a red star"], groups, np.random.default_rng(0)
    )
    assert again == out
