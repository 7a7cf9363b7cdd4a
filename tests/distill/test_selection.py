import math

import pytest
import torch

from vldistill.distill.selection import (
    TokenSelection,
    head_mean_cls_scores,
    keep_count,
    relevance,
    select_tokens,
    selection_mask,
)
from vldistill.errors import ConfigError

T, F = True, False


def test_relevance_is_cosine_similarity() -> None:
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-3.0, 0.0], [0.0, 0.0]]])
    query = torch.tensor([[3.0, 0.0]])
    # cos with (1, 0): 1, 0, 1/sqrt(2), -1, and 0 for the zero vector
    expected = torch.tensor([[1.0, 0.0, 1 / math.sqrt(2), -1.0, 0.0]])
    assert torch.allclose(relevance(tokens, query), expected)


def test_select_top_k_skips_masked_tokens() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.95], [0.3, 0.2, 0.1, 0.0]])
    mask = torch.tensor([[T, T, T, F], [T, T, T, T]])
    # row 0: 0.95 is padding -> the two best real are 0.9 (1) and 0.5 (2)
    # row 1: the two best are 0.3 (0) and 0.2 (1)
    assert select_tokens(scores, mask, k=2).tolist() == [[F, T, T, F], [T, T, F, F]]


def test_select_ties_go_to_lower_index() -> None:
    scores = torch.tensor([[0.5, 0.7, 0.5, 0.7, 0.5]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    # order: 0.7 @1, 0.7 @3, 0.5 @0, 0.5 @2, 0.5 @4
    assert select_tokens(scores, mask, k=3).tolist() == [[T, T, F, T, F]]
    assert select_tokens(torch.zeros(1, 5), mask, k=2).tolist() == [[T, T, F, F, F]]


def test_select_k_larger_than_real_keeps_all_real() -> None:
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    mask = torch.tensor([[T, F, T], [F, F, F]])
    assert select_tokens(scores, mask, k=10).tolist() == [[T, F, T], [F, F, F]]


def test_select_real_token_with_minus_inf_or_nan_beats_padding() -> None:
    # The only real token scores -inf (row 0) or NaN (row 1); padding at index 0 must still lose.
    scores = torch.tensor([[0.0, -math.inf, 5.0], [1.0, math.nan, 0.0]])
    mask = torch.tensor([[F, T, F], [F, T, F]])
    assert select_tokens(scores, mask, k=1).tolist() == [[F, T, F], [F, T, F]]


def test_select_ratio_rounds_up_with_at_least_one() -> None:
    scores = torch.arange(10.0).flip(0).repeat(3, 1)  # 9, 8, ..., 0: best tokens first
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :] = True  # 10 real: ceil(0.3 * 10) = 3 (not 4 from 3.0000000000000004)
    mask[1, :4] = True  # 4 real: ceil(0.3 * 4) = ceil(1.2) = 2
    mask[2, :2] = True  # 2 real: ceil(0.3 * 2) = ceil(0.6) = 1
    chosen = select_tokens(scores, mask, ratio=0.3)
    assert chosen.sum(dim=1).tolist() == [3, 2, 1]
    assert chosen[0, :3].all() and chosen[1, :2].all() and chosen[2, 0]
    # ratio 0.05 of 4 real tokens is 0.2 -> still one
    assert select_tokens(scores[1:2], mask[1:2], ratio=0.05).sum().item() == 1


def test_keep_count_values_and_bad_arguments() -> None:
    real = torch.tensor([10, 2, 0])
    assert keep_count(real, k=3).tolist() == [3, 2, 0]
    assert keep_count(real, ratio=0.3).tolist() == [3, 1, 0]  # ceil(3.0), ceil(0.6), none to keep
    assert keep_count(real, ratio=1.0).tolist() == [10, 2, 0]
    with pytest.raises(ConfigError, match="exactly one"):
        keep_count(real, k=1, ratio=0.5)
    with pytest.raises(ConfigError, match="exactly one"):
        keep_count(real)
    with pytest.raises(ConfigError, match="k=0"):
        keep_count(real, k=0)
    with pytest.raises(ConfigError, match="ratio=1.5"):
        keep_count(real, ratio=1.5)


def test_head_mean_cls_scores_splits_text_and_image() -> None:
    # H = 2, L = 1, P = 2: heads [0.2, 0.5, 0.3] and [0.4, 0.1, 0.5] -> mean [0.3, 0.3, 0.4]
    cls_attention = torch.tensor([[[0.2, 0.5, 0.3], [0.4, 0.1, 0.5]]])
    text, image = head_mean_cls_scores(cls_attention, text_length=1)
    assert torch.allclose(text, torch.tensor([[0.3]]))
    assert torch.allclose(image, torch.tensor([[0.3, 0.4]]))


def test_selection_mask_strategies() -> None:
    mask = torch.tensor([[T, T, T, F]])
    teacher = torch.tensor([[0.9, 0.1, 0.8, 1.0]])
    student = torch.tensor([[0.1, 0.9, 0.8, 1.0]])
    assert selection_mask("all", mask=mask, k=1).tolist() == mask.tolist()
    by_teacher = selection_mask(
        TokenSelection.TEACHER_RELEVANCE, mask=mask, teacher_scores=teacher, student_cls_scores=student, k=2
    )
    assert by_teacher.tolist() == [[T, F, T, F]]
    by_student = selection_mask("student_cls", mask=mask, teacher_scores=teacher, student_cls_scores=student, ratio=0.5)
    # ceil(0.5 * 3 real) = 2 -> 0.9 @1 and 0.8 @2
    assert by_student.tolist() == [[F, T, T, F]]


def test_selection_mask_errors() -> None:
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ConfigError, match="unknown token selection strategy 'random'"):
        selection_mask("random", mask=mask, k=1)
    with pytest.raises(ValueError, match="needs its scores"):
        selection_mask("student_cls", mask=mask, teacher_scores=torch.ones(1, 2), k=1)
