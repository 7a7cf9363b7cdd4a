"""``vldistill plan``: each loss term's value and its gradient on the student relative to the task's."""

from __future__ import annotations

import math

import pytest
import torch
from rich.console import Console
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.training.plan import format_term, gradient_ratios, make_plan, render_plan


def test_gradient_ratios_by_hand() -> None:
    w = torch.tensor([1.0, -1.0], requires_grad=True)
    other = torch.tensor([5.0], requires_grad=True)  # not a student parameter: ignored
    terms = {"task": w[0] + 2 * w[1], "a": 3 * w[0] + 100 * other[0], "b": 0 * other[0]}
    ratios = gradient_ratios(terms, [w])
    # task: gradient [1, 2], norm sqrt(5); a: [3, 0], norm 3; b reaches no student parameter: 0
    assert ratios == pytest.approx({"task": 1.0, "a": 3 / math.sqrt(5), "b": 0.0})
    assert w.grad is None  # the plan measures, it does not accumulate gradients


def test_format_term() -> None:
    assert format_term("feature/clip/image", 0.93, 5.93) == "feature/clip/image 0.93  grad 5.9x task"
    assert format_term("task", 2535.831, 1.0) == "task 2536  grad 1x task"


def test_plan_shows_each_terms_value_and_gradient_relative_to_the_task() -> None:
    cfg = parse_config(tiny_tree("vqa", "clip_td", ("clip",), method_options={"image_weight": 4.0}), "t")
    plan = make_plan(cfg)
    assert set(plan.gradients) == set(plan.losses) == {"task", "feature/clip/image", "feature/clip/text"}
    assert plan.gradients["task"] == 1.0
    assert all(v > 0 for v in plan.gradients.values())
    # the same batch with image_weight 1: the image term's value and gradient are exactly 4x smaller
    base = make_plan(parse_config(tiny_tree("vqa", "clip_td", ("clip",)), "t"))
    assert plan.losses["feature/clip/image"] == pytest.approx(4 * base.losses["feature/clip/image"], rel=1e-4)
    assert plan.gradients["feature/clip/image"] == pytest.approx(4 * base.gradients["feature/clip/image"], rel=1e-2)
    assert plan.gradients["feature/clip/text"] == pytest.approx(base.gradients["feature/clip/text"], rel=1e-2)
    console = Console(record=True, width=200)
    render_plan(plan, console)
    text = console.export_text()
    ratio = plan.gradients["feature/clip/image"]
    assert f"feature/clip/image {plan.losses['feature/clip/image']:.4g}  grad {ratio:.2g}x task" in text
    assert "target cosine" in text
