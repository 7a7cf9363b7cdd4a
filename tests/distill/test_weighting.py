import math

import pytest
import torch

from vldistill.distill.weighting import confidence_weights, constant_weights, global_mean, normalize_weights
from vldistill.errors import ConfigError

E2 = math.exp(2.0)


def test_confidence_is_softmax_over_real_candidates_at_gold() -> None:
    # Candidate 2 is padding (its logit 7 would dominate if it counted).
    logits = torch.tensor([[2.0, 0.0, 7.0], [2.0, 0.0, 7.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    gold = torch.tensor([0, 1])
    # softmax([2, 0]) = [e^2, 1] / (e^2 + 1) = [0.880797, 0.119203]
    expected = torch.tensor([E2 / (E2 + 1), 1 / (E2 + 1)])
    assert torch.allclose(confidence_weights(logits, mask, gold), expected)


def test_confidence_temperature_and_floor() -> None:
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    gold = torch.tensor([0, 1])
    # T = 2: softmax([1, 0]) = [e / (e + 1), 1 / (e + 1)] = [0.731059, 0.268941]
    e = math.e
    weights = confidence_weights(logits, mask, gold, temperature=2.0)
    assert torch.allclose(weights, torch.tensor([e / (e + 1), 1 / (e + 1)]))
    # floor 0.3 lifts 0.268941 to 0.3 and leaves 0.731059
    floored = confidence_weights(logits, mask, gold, temperature=2.0, floor=0.3)
    assert torch.allclose(floored, torch.tensor([e / (e + 1), 0.3]))


def test_unknown_gold_gets_the_floor_even_without_real_candidates() -> None:
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    mask = torch.tensor([[True, True], [False, False]])
    gold = torch.tensor([-1, -1])
    assert confidence_weights(logits, mask, gold).tolist() == [0.0, 0.0]
    assert torch.allclose(confidence_weights(logits, mask, gold, floor=0.1), torch.tensor([0.1, 0.1]))


def test_normalize_makes_the_batch_mean_one() -> None:
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    # raw [0.880797, 0.119203], mean 0.5 -> [1.761594, 0.238406]
    weights = confidence_weights(logits, mask, torch.tensor([0, 1]), normalize=True)
    assert torch.allclose(weights, torch.tensor([2 * E2 / (E2 + 1), 2 / (E2 + 1)]))
    assert weights.mean().item() == pytest.approx(1.0)
    assert torch.allclose(normalize_weights(torch.tensor([0.2, 0.6])), torch.tensor([0.5, 1.5]))
    assert normalize_weights(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_weights_are_detached_from_the_teacher() -> None:
    logits = torch.tensor([[2.0, 0.0]], requires_grad=True)
    weights = confidence_weights(logits, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0]))
    assert not weights.requires_grad


def test_constant_weights() -> None:
    assert constant_weights(3).tolist() == [1.0, 1.0, 1.0]
    assert constant_weights(2, 0.5, dtype=torch.float64).tolist() == [0.5, 0.5]
    assert constant_weights(2).dtype == torch.float32


def test_invalid_arguments() -> None:
    logits = torch.zeros(1, 2)
    mask = torch.tensor([[True, False]])
    with pytest.raises(ConfigError, match="temperature=0"):
        confidence_weights(logits, mask, torch.tensor([0]), temperature=0)
    with pytest.raises(ConfigError, match="floor=2"):
        confidence_weights(logits, mask, torch.tensor([0]), floor=2)
    with pytest.raises(ValueError, match="padded candidate"):
        confidence_weights(logits, mask, torch.tensor([1]))
    with pytest.raises(ValueError, match="past the candidates"):
        confidence_weights(logits, mask, torch.tensor([2]))


def test_normalize_by_a_given_mean() -> None:
    # the global batch's mean (e.g. 0.8 over all processes) divides this process's part
    assert torch.allclose(normalize_weights(torch.tensor([0.2, 0.6]), torch.tensor(0.8)), torch.tensor([0.25, 0.75]))
    # without a process group the global batch is this batch
    assert global_mean(torch.tensor([0.2, 0.6, 1.0])).item() == pytest.approx(0.6)
