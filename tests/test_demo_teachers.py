"""The demo's small CLIP: pre-training on a tiny generated world, saving, determinism and caching."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from vldistill.data.readers.vqa import read_vqa
from vldistill.demo import teachers as demo_teachers
from vldistill.demo.teachers import (
    ensure_demo_clip,
    load_caption_pairs,
    pretrain_clip,
    retrieval_accuracy,
    zero_shot_vqa,
)
from vldistill.distill.contrastive import clip_loss
from vldistill.errors import ConfigError, DataError
from vldistill.models.teachers.base import weights_digest
from vldistill.models.teachers.clip import CLIPTeacher, small_clip_config
from vldistill.models.teachers.factory import TeacherConfig, build_teacher

TINY: dict[str, Any] = dict(
    image_size=32,
    patch_size=8,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    projection_dim=16,
    batch_size=32,
    lr=3e-3,
    seed=0,
    progress=False,
)


@pytest.fixture(scope="module")
def world(caption_world: Path) -> Path:
    return caption_world  # 150 captions per style (conftest)


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("clip") / "teacher"
    return out, pretrain_clip(world, out, epochs=2, **TINY)


def test_clip_loss_matches_hand_computed_value() -> None:
    embeds = torch.eye(2)
    # logits = I (scale e^0 = 1): each row's cross-entropy is log(1 + e^-1), in both directions.
    assert clip_loss(embeds, embeds, torch.tensor(0.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_stats_count_both_styles_and_hold_out_ten_percent(trained: tuple[Path, dict[str, Any]]) -> None:
    _, stats = trained
    assert (stats["pairs"], stats["held_out_pairs"], stats["train_pairs"]) == (300, 30, 270)
    assert stats["retrieval_chance"] == pytest.approx(1 / 30)  # one held-out batch of 30
    assert 0.0 <= stats["retrieval_top1"] <= 1.0
    assert stats["final_loss"] < stats["first_epoch_loss"]
    assert set(stats["zero_shot_vqa"]) == {"base", "shifted"}


def test_saved_teacher_loads_and_beats_its_initialisation(world: Path, trained: tuple[Path, dict[str, Any]]) -> None:
    directory, _ = trained
    teacher = build_teacher(TeacherConfig(kind="clip", pretrained=str(directory)))
    assert isinstance(teacher, CLIPTeacher)
    assert teacher.processor.image_size == (32, 32)
    pixels, ids, mask, _ = load_caption_pairs(world, teacher.processor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY["seed"])  # the initialisation pretrain_clip started from
        config = small_clip_config(
            teacher.processor.tokenizer,
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_layers=1,
            num_heads=2,
            intermediate_size=64,
            projection_dim=16,
        )
        initial = CLIPTeacher.from_config(config, teacher.processor)

    def loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            image, text = demo_teachers._embed(model, pixels, ids, mask)
            return clip_loss(image, text, model.logit_scale).item()

    assert loss(teacher.model) < loss(initial.model) - 0.5


def test_same_seed_gives_the_same_weights(world: Path, trained: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    directory, stats = trained
    again = pretrain_clip(world, tmp_path / "again", epochs=2, **TINY)
    first = CLIPTeacher.from_pretrained(directory)
    second = CLIPTeacher.from_pretrained(tmp_path / "again")
    assert weights_digest(first) == weights_digest(second)
    assert again["final_loss"] == stats["final_loss"]


def test_max_pairs_takes_a_subset(world: Path, trained: tuple[Path, dict[str, Any]]) -> None:
    teacher = CLIPTeacher.from_pretrained(trained[0])
    pixels, ids, mask, _ = load_caption_pairs(world, teacher.processor, max_pairs=40)
    assert pixels.shape == (40, 3, 32, 32)
    assert ids.shape == mask.shape and ids.shape[0] == 40


def test_retrieval_chance_averages_over_ragged_batches(trained: tuple[Path, dict[str, Any]], world: Path) -> None:
    teacher = CLIPTeacher.from_pretrained(trained[0])
    pixels, ids, mask, _ = load_caption_pairs(world, teacher.processor, max_pairs=100)
    accuracy, chance = retrieval_accuracy(teacher.model, pixels, ids, mask, batch_size=64)
    assert chance == pytest.approx(2 / 100)  # batches of 64 and 36: (64/64 + 36/36) / 100
    assert 0.0 <= accuracy <= 1.0


def test_zero_shot_vqa_scores_every_answered_val_question(world: Path, trained: tuple[Path, dict[str, Any]]) -> None:
    teacher = CLIPTeacher.from_pretrained(trained[0])
    result = zero_shot_vqa(teacher, world / "base" / "vqa")
    assert result["questions"] == len(read_vqa(world / "base" / "vqa", "val2014"))
    assert sum(t["questions"] for t in result["by_type"].values()) == result["questions"]
    assert 0.0 < result["chance"] < 1.0 and 0.0 < result["gold_probability"] < 1.0


def test_ensure_demo_clip_trains_once(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def counting(world_dir: Path, out_dir: Path, **kwargs: Any) -> dict[str, Any]:
        calls.append(out_dir)
        return pretrain_clip(world_dir, out_dir, **kwargs)

    monkeypatch.setattr(demo_teachers, "pretrain_clip", counting)
    settings = {k: v for k, v in TINY.items() if k != "progress"}
    first = ensure_demo_clip(world, tmp_path, epochs=1, max_pairs=64, progress=False, **settings)
    second = ensure_demo_clip(world, tmp_path, epochs=1, max_pairs=64, progress=False, **settings)
    assert first == second and len(calls) == 1
    assert calls[0] != first  # trained elsewhere, renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    assert (first / demo_teachers.SETTINGS_FILE).is_file()
    other = ensure_demo_clip(world, tmp_path, epochs=1, max_pairs=48, progress=False, **settings)
    assert other != first and len(calls) == 2


def test_a_world_without_captions_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="captions.jsonl"):
        pretrain_clip(tmp_path, tmp_path / "out", **TINY)


def test_a_malformed_caption_line_names_file_and_line(tmp_path: Path, trained: tuple[Path, dict[str, Any]]) -> None:
    captions = tmp_path / "base" / "captions" / "captions.jsonl"
    captions.parent.mkdir(parents=True)
    captions.write_text('{"image": "images/0.jpg", "caption": "A red circle."}\n{"image": 3}\n')
    teacher = CLIPTeacher.from_pretrained(trained[0])
    with pytest.raises(DataError, match=r"captions.jsonl: line 2: needs string fields"):
        load_caption_pairs(tmp_path, teacher.processor)
