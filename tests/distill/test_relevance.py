"""CLIP word-to-patch relevance into the student's text-to-image attention (``method.relevance_weight``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vldistill.distill.relevance import relevance_kl, student_word_attention, teacher_relevance


def test_teacher_relevance_is_a_softmax_of_cosines_over_patches() -> None:
    words = torch.tensor([[[1.0, 0.0]]])  # one word
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two patches on a 1x2 grid
    rel = teacher_relevance(words, patches, (1, 2), (1, 2), tau=0.5)
    assert rel[0, 0].tolist() == pytest.approx([math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)])
    assert rel[0, 0].tolist() == pytest.approx([0.8808, 0.1192], abs=1e-4)


def test_teacher_patches_are_averaged_onto_the_coarser_student_grid() -> None:
    # a 2x2 teacher grid onto a 1x2 student grid: columns are averaged (rows 0 and 1 of each column)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    patches = torch.stack([e0, e1, e0, e1])[None]  # row-major: (0,0)=e0 (0,1)=e1 (1,0)=e0 (1,1)=e1
    words = torch.stack([e1])[None]
    rel = teacher_relevance(words, patches, (2, 2), (1, 2), tau=1.0)
    # cell 0 holds e0 (cosine 0 with the word), cell 1 holds e1 (cosine 1)
    assert rel[0, 0].tolist() == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])


def test_student_word_attention_averages_heads_and_word_pieces() -> None:
    # 2 heads, 3 tokens ([CLS], piece a of word 0, piece b of word 0), 2 patches
    t2i = torch.tensor([[[[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]]]])  # (1, 2, 3, 2)
    word_index = torch.tensor([[-1, 0, 0]])
    att, mask = student_word_attention(t2i, word_index, max_words=2)
    # head mean: piece a [1, 0], piece b [0.5, 0.5]; word 0 = mean of its pieces [0.75, 0.25]
    assert att[0, 0].tolist() == pytest.approx([0.75, 0.25])
    assert mask.tolist() == [[True, False]]
    assert att[0, 1].tolist() == [0.0, 0.0]


def test_relevance_kl_by_hand_and_masked_words_ignored() -> None:
    teacher = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])
    student = torch.tensor([[[0.25, 0.75], [1e-12, 1.0]]], requires_grad=True)
    kl = relevance_kl(teacher, student, torch.tensor([[True, False]]))
    assert kl.tolist() == pytest.approx([0.5 * math.log(2) + 0.5 * math.log(2 / 3)])
    kl.sum().backward()
    assert student.grad[0, 1].tolist() == [0.0, 0.0]  # the masked word gets no gradient
    assert relevance_kl(teacher, student, torch.zeros(1, 2, dtype=torch.bool)).tolist() == [0.0]


def test_matching_attention_has_zero_loss() -> None:
    torch.manual_seed(0)
    words, patches = F.normalize(torch.randn(3, 4, 8), dim=-1), F.normalize(torch.randn(3, 6, 8), dim=-1)
    rel = teacher_relevance(words, patches, (2, 3), (2, 3), tau=0.1)
    assert relevance_kl(rel, rel.clone(), torch.ones(3, 4, dtype=torch.bool)).abs().max() < 1e-6
