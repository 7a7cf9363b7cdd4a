from __future__ import annotations

import math

import pytest
import torch

from vldistill.errors import ConfigError
from vldistill.models.heads import build_head, head_logits, task_loss


def test_targets_of_each_task(tiny_targets) -> None:
    # answers: red, blue, 2, yes, no; example 2's "three" is outside the vocabulary and dropped
    expected = torch.tensor([[1.0, 0.3, 0, 0, 0], [0, 0, 0.9, 0, 0]])
    assert torch.allclose(tiny_targets("vqa"), expected)
    assert tiny_targets("vcr").tolist() == [1, 2]
    assert tiny_targets("snli_ve").tolist() == [0, 2]


def test_vqa_loss_is_bce_times_answers() -> None:
    logits, targets = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    # BCE(0, 1) = BCE(0, 0) = log 2; mean log 2, times 2 answers
    assert task_loss("vqa", logits, targets).item() == pytest.approx(2 * math.log(2))


def test_classification_loss_ignores_unknown_labels() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [9.0, 0.0, 0.0, 0.0]])
    assert task_loss("vcr", logits, torch.tensor([2, -1])).item() == pytest.approx(math.log(4))


def test_head_layouts() -> None:
    pooled = torch.randn(8, 16)
    assert head_logits("vcr", build_head("vcr", 16, 4), pooled, 2).shape == (2, 4)
    assert head_logits("nlvr2", build_head("nlvr2", 16, 2), pooled[:4], 2).shape == (2, 2)
    assert head_logits("vqa", build_head("vqa", 16, 7), pooled[:2], 2).shape == (2, 7)
    with pytest.raises(ConfigError, match="unknown task"):
        build_head("gqa", 16, 2)
