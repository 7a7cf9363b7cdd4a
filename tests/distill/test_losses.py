import math

import pytest
import torch

from vldistill.distill.losses import (
    attention_kl,
    feature_distance,
    logit_kd,
    renormalize,
    weighted_feature_loss,
)
from vldistill.models.heads import task_loss

T, F = True, False


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    # One instance, K = 2 tokens, D = 2.
    student = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    return student, teacher


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # token 0: diff (1, 2); token 1: diff (2, -1)
        # l1: (|1| + |2|) / 2 = 1.5 and (|2| + |-1|) / 2 = 1.5 -> mean 1.5
        ("l1", 1.5),
        # l2: (1 + 4) / 2 = 2.5 and (4 + 1) / 2 = 2.5 -> mean 2.5
        ("l2", 2.5),
        # cosine: token 0 vs zero vector -> cos 0 -> 1; token 1: (3, 0).(1, 1) / (3 sqrt 2) = 1/sqrt 2
        # -> 1 - 0.707107 = 0.292893; mean (1 + 0.292893) / 2 = 0.646447
        ("cosine", (1 + 1 - 1 / math.sqrt(2)) / 2),
    ],
)
def test_feature_distance_all_selected(kind: str, expected: float) -> None:
    student, teacher = _pair()
    assert feature_distance(student, teacher, torch.tensor([[T, T]]), kind).item() == pytest.approx(expected)


def test_feature_distance_only_selected_tokens_count() -> None:
    student, teacher = _pair()
    # Only token 1: l2 = ((3 - 1)^2 + (0 - 1)^2) / 2 = 2.5; l1 = (2 + 1) / 2 = 1.5
    assert feature_distance(student, teacher, torch.tensor([[F, T]]), "l2").item() == pytest.approx(2.5)
    assert feature_distance(student, teacher, torch.tensor([[F, T]]), "l1").item() == pytest.approx(1.5)
    assert feature_distance(student, teacher, torch.tensor([[F, T]]), "cosine").item() == pytest.approx(
        1 - 1 / math.sqrt(2)
    )


def test_feature_distance_per_instance_and_empty_instance() -> None:
    student = torch.tensor([[[1.0, 2.0], [3.0, 0.0]], [[5.0, 5.0], [0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[T, F], [F, F]])
    # instance 0: token 0 l1 = 1.5; instance 1 has no selected token -> 0
    assert feature_distance(student, teacher, mask, "l1").tolist() == [1.5, 0.0]


@pytest.mark.parametrize("kind", ["l1", "l2", "cosine"])
def test_feature_distance_gradient_only_where_selected(kind: str) -> None:
    student = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    teacher = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    mask = torch.tensor([[T, F], [F, F]])  # instance 1 selects nothing; its zero vectors stay unused
    feature_distance(student, teacher, mask, kind).sum().backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[0, 0].abs().sum() > 0
    assert student.grad[0, 1].tolist() == [0.0, 0.0]
    assert student.grad[1].abs().sum().item() == 0.0
    assert teacher.grad is None  # the teacher is a constant target


def test_feature_distance_l2_gradient_value() -> None:
    # d/ds mean_d (s - t)^2 = 2 (s - t) / D: s = (1, 2), t = (0, 1) -> (1, 1)
    student = torch.tensor([[[1.0, 2.0]]], requires_grad=True)
    feature_distance(student, torch.tensor([[[0.0, 1.0]]]), torch.tensor([[T]]), "l2").sum().backward()
    assert student.grad.tolist() == [[[1.0, 1.0]]]


def test_feature_distance_rejects_unknown_kind_and_shapes() -> None:
    student, teacher = _pair()
    with pytest.raises(ValueError, match="unknown feature distance 'l3'"):
        feature_distance(student, teacher, torch.tensor([[T, T]]), "l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="disagree"):
        feature_distance(student, teacher[:, :1], torch.tensor([[T, T]]), "l1")


def test_weighted_feature_loss() -> None:
    # (0.5 * 2 + 0 * 4 + 2 * 1) / 3 = 1
    loss = weighted_feature_loss(torch.tensor([2.0, 4.0, 1.0]), torch.tensor([0.5, 0.0, 2.0]))
    assert loss.item() == pytest.approx(1.0)


def test_logit_kd_softmax_values() -> None:
    ln3 = math.log(3)
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    teacher = torch.tensor([[ln3, 0.0], [1.0, 2.0]])
    # row 0: teacher [0.75, 0.25], student [0.5, 0.5]: 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812
    # row 1: identical -> 0; batch mean = 0.065406
    row0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert logit_kd(student, teacher, kind="softmax", temperature=1.0).item() == pytest.approx(row0 / 2)
    # T = 2 with teacher logit 2 ln 3: t / T = [ln 3, 0] again, student / T = [0, 0] -> row0 * T^2 = 4 row0
    loss = logit_kd(student[:1], torch.tensor([[2 * ln3, 0.0]]), kind="softmax", temperature=2.0)
    assert loss.item() == pytest.approx(4 * row0)


def test_logit_kd_sigmoid_values() -> None:
    ln3 = math.log(3)
    student = torch.tensor([[0.0, 2.0]])
    teacher = torch.tensor([[0.0, 2 * ln3]])
    # T = 2 on both sides: targets sigmoid([0, ln 3]) = [0.5, 0.75], student logits s / T = [0, 1]
    # answer 0: softplus(0) - 0.5 * 0 = ln 2 = 0.693147
    # answer 1: softplus(1) - 0.75 * 1 = 1.313262 - 0.75 = 0.563262
    per_answer = [math.log(2), math.log1p(math.e) - 0.75]
    # times T^2 = 4: mean over answers 2.512818, sum 5.025636
    mean = logit_kd(student, teacher, kind="sigmoid", temperature=2.0).item()
    assert mean == pytest.approx(4 * sum(per_answer) / 2) and mean == pytest.approx(2.512818, abs=1e-6)
    summed = logit_kd(student, teacher, kind="sigmoid", temperature=2.0, classes="sum").item()
    assert summed == pytest.approx(4 * sum(per_answer)) and summed == pytest.approx(5.025636, abs=1e-6)
    with pytest.raises(ValueError, match="class reduction"):
        logit_kd(student, teacher, kind="sigmoid", temperature=1.0, classes="max")  # type: ignore[arg-type]


def test_vqa_soft_labels_are_on_the_task_loss_scale() -> None:
    """Issue 13: at 3,129 answers the answer-mean soft-label term weighed 1/3,129 of the task loss."""
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 3129), torch.randn(8, 3129)
    mean = logit_kd(student, teacher, kind="sigmoid", temperature=1.0, classes="mean").item()
    summed = logit_kd(student, teacher, kind="sigmoid", temperature=1.0, classes="sum").item()
    # The old scale (answer mean) and the task loss's (sum over answers, mean over the batch) for
    # these seeded logits; the issue's own tensors gave 0.81043 and 2535.83, the same ratio 3,129.
    assert mean == pytest.approx(0.806803, abs=1e-6)
    assert summed == pytest.approx(2524.487, abs=1e-2)
    assert summed == pytest.approx(3129 * mean, rel=1e-5)
    # Exactly the VQA task loss of the student against the teacher's probabilities as soft scores.
    assert summed == pytest.approx(task_loss("vqa", student, torch.sigmoid(teacher)).item(), rel=1e-6)


def test_logit_kd_sigmoid_gradient_is_temperature_free_at_high_temperature() -> None:
    # T^2 * d BCE(sigmoid(s/T), sigmoid(t/T)) / ds = T (sigmoid(s/T) - sigmoid(t/T)), which tends to (s - t) / 4.
    student = torch.tensor([[1.0, -2.0]], requires_grad=True)
    teacher = torch.tensor([[3.0, 0.0]])
    logit_kd(student, teacher, kind="sigmoid", temperature=1.0, classes="sum").backward()
    # T = 1: [sigmoid(1) - sigmoid(3), sigmoid(-2) - sigmoid(0)] = [0.731059 - 0.952574, 0.119203 - 0.5]
    assert torch.allclose(student.grad, torch.tensor([[-0.221516, -0.380797]]), atol=1e-6)
    student.grad = None
    logit_kd(student, teacher, kind="sigmoid", temperature=1000.0, classes="sum").backward()
    assert torch.allclose(student.grad, torch.tensor([[-0.5, -0.5]]), atol=1e-4)


def test_logit_kd_gradient_goes_to_student_only() -> None:
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[math.log(3), 0.0]], requires_grad=True)
    logit_kd(student, teacher, kind="softmax", temperature=1.0).backward()
    # d KL / d s = softmax(s) - softmax(t) = [0.5 - 0.75, 0.5 - 0.25]
    assert torch.allclose(student.grad, torch.tensor([[-0.25, 0.25]]))
    assert teacher.grad is None
    with pytest.raises(ValueError, match="unknown logit distillation kind"):
        logit_kd(student, teacher, kind="hinge", temperature=1.0)  # type: ignore[arg-type]


def test_renormalize_drops_padded_keys() -> None:
    attn = torch.tensor([[[[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]]]])  # (N=1, H=1, Q=2, K=3)
    key_mask = torch.tensor([[T, T, F]])
    # row 0: [0.2, 0.3] / 0.5 = [0.4, 0.6]; row 1 has no mass on real keys -> zeros
    out = renormalize(attn, key_mask)
    assert torch.allclose(out, torch.tensor([[[[0.4, 0.6, 0.0], [0.0, 0.0, 0.0]]]]))


def _attention_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # N = 1, H = 2, Q = 2 (query 1 padded), K = 3 (key 2 padded)
    teacher = torch.tensor([[[[0.5, 0.5, 0.0], [0.3, 0.3, 0.4]], [[1.0, 0.0, 0.0], [0.2, 0.2, 0.6]]]])
    student = torch.tensor([[[[0.25, 0.75, 0.0], [0.9, 0.05, 0.05]], [[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]]]])
    return teacher, student, torch.tensor([[T, F]]), torch.tensor([[T, T, F]])


def test_attention_kl_hand_value() -> None:
    teacher, student, query_mask, key_mask = _attention_example()
    # head 0, query 0: 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln(4 / 3) = 0.143841
    # head 1, query 0: 1.0 ln(1.0 / 0.5) + 0 (0 log 0 = 0) = ln 2 = 0.693147
    # mean over 2 heads x 1 real query = 0.418494
    expected = (0.5 * math.log(4 / 3) + math.log(2)) / 2
    assert attention_kl(teacher, student, query_mask, key_mask).item() == pytest.approx(expected)


def test_attention_kl_ignores_padded_queries_and_keys() -> None:
    teacher, student, query_mask, key_mask = _attention_example()
    before = attention_kl(teacher, student, query_mask, key_mask)
    teacher2, student2 = teacher.clone(), student.clone()
    teacher2[:, :, 1] = torch.nan  # padded query rows
    student2[:, :, 1] = 0.0
    teacher2[..., 2] = 7.0  # padded key column
    student2[..., 2] = 0.0
    assert attention_kl(teacher2, student2, query_mask, key_mask).item() == pytest.approx(before.item())


def test_attention_kl_matches_a_direct_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    n, heads, queries, keys = 3, 2, 4, 5
    query_mask = torch.tensor([[T, T, T, F], [T, F, F, F], [T, T, T, T]])
    key_mask = torch.tensor([[T, T, T, F, F], [T, T, T, T, T], [T, T, F, F, F]])
    bias = torch.where(key_mask, 0.0, -math.inf)[:, None, None, :]
    teacher = (torch.randn(n, heads, queries, keys, generator=generator) + bias).softmax(-1)
    student = (torch.randn(n, heads, queries, keys, generator=generator) + bias).softmax(-1)
    total, count = 0.0, 0
    for i in range(n):
        for h in range(heads):
            for q in range(queries):
                if not query_mask[i, q]:
                    continue
                count += 1
                for k in range(keys):
                    if key_mask[i, k]:
                        t, s = teacher[i, h, q, k].item(), student[i, h, q, k].item()
                        total += t * math.log(t / s)
    assert count == 2 * (3 + 1 + 4)
    assert attention_kl(teacher, student, query_mask, key_mask).item() == pytest.approx(total / count, rel=1e-5)


def test_attention_kl_gradient_only_at_real_positions() -> None:
    teacher, student, query_mask, key_mask = _attention_example()
    student.requires_grad_(True)
    attention_kl(teacher, student, query_mask, key_mask).backward()
    # d/ds of -t ln s / (heads * real queries) = -t / (2 s): head 0 query 0 -> [-1, -1/3]
    assert torch.allclose(student.grad[0, 0, 0], torch.tensor([-1.0, -1 / 3, 0.0]))
    assert student.grad[:, :, 1].abs().sum().item() == 0.0
    assert student.grad[..., 2].abs().sum().item() == 0.0


def test_attention_kl_is_zero_without_real_queries() -> None:
    teacher, student, _, key_mask = _attention_example()
    assert attention_kl(teacher, student, torch.tensor([[F, F]]), key_mask).item() == 0.0
