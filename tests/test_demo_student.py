"""The demo's pre-trained student: image-text matching on a tiny world, saved as a backbone any task fine-tunes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from vldistill.data.world.scene import COLOURS, SHAPES
from vldistill.demo.student import _views, ensure_demo_student, pretrain_fusion_itm
from vldistill.models.students import StudentConfig, build_student

STUDENT: dict[str, Any] = dict(
    hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, image_size=32, patch_size=8, max_text_len=40
)
SETTINGS: dict[str, Any] = dict(
    student=STUDENT, epochs=2, batch_size=16, negative_words=[list(COLOURS), list(SHAPES)], progress=False
)


@pytest.fixture(scope="module")
def world(caption_world: Path) -> Path:
    return caption_world  # 150 captions per style (conftest)


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("student") / "itm"
    return out, pretrain_fusion_itm(world, out, **SETTINGS)


def test_views_pair_each_image_with_its_caption_then_a_negative() -> None:
    pixels = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    ids = torch.tensor([[1, 10, 2], [1, 11, 2], [1, 12, 2]])
    hard = torch.tensor([[1, 20, 2], [1, 21, 2], [1, 22, 2]])
    mask = torch.ones_like(ids)
    has_hard = torch.tensor([True, False, True])
    use_hard = torch.tensor([True, True, False])
    inputs, labels = _views(torch.tensor([0, 1, 2]), pixels, ids, mask, hard, mask, has_hard, use_hard)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]
    # image 0: its hard negative; image 1 has none: the next image's caption; image 2: not drawn hard
    assert inputs.input_ids[:, 1].tolist() == [10, 11, 12, 20, 12, 10]
    assert inputs.pixel_values[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]


def test_stats_use_the_base_style_only_and_hold_out_a_tenth(trained: tuple[Path, dict[str, Any]]) -> None:
    _, stats = trained
    assert (stats["styles"], stats["pairs"], stats["held_out_pairs"], stats["train_pairs"]) == (["base"], 150, 15, 135)
    assert 0.0 <= stats["itm_accuracy_before"] <= 1.0 and 0.0 <= stats["itm_accuracy_held_out"] <= 1.0
    assert stats["final_loss"] < stats["first_epoch_loss"]


def test_the_saved_backbone_fine_tunes_for_a_task_with_a_new_head(trained: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = trained
    saved = load_file(str(folder / "model.safetensors"))
    student = build_student(StudentConfig(kind="fusion", pretrained=str(folder), max_text_len=40), "snli_ve", 3)
    weights = student.model.state_dict()
    backbone = {k: v for k, v in weights.items() if k.startswith("vilt.")}
    assert backbone and all(torch.equal(v, saved[k.removeprefix("vilt.")]) for k, v in backbone.items())
    assert not any(k.startswith("classifier") for k in saved)  # the matching head is not kept


def test_same_settings_give_the_same_weights_and_the_cache_trains_once(world: Path, tmp_path: Path, trained) -> None:
    first = ensure_demo_student(world, tmp_path, **SETTINGS)
    assert ensure_demo_student(world, tmp_path, **SETTINGS) == first
    assert len(list(tmp_path.glob("student-*"))) == 1
    a, b = load_file(str(first / "model.safetensors")), load_file(str(trained[0] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
