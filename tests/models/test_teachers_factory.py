"""TeacherConfig validation, build_teacher for every kind and source, and the shared base helpers
(weight digests, config descriptions, refusing checkpoints with missing weights)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from transformers import BertConfig

from vldistill.errors import ConfigError
from vldistill.models.teachers import (
    CLIPTeacher,
    FusionTeacher,
    TeacherConfig,
    TextTeacher,
    TinyTeacherConfig,
    VisionTeacher,
    build_teacher,
)
from vldistill.models.teachers.base import config_description, weights_digest


def test_config_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'pretrained'"):
        TeacherConfig(kind="clip")
    with pytest.raises(ValidationError, match="exactly one of 'pretrained'"):
        TeacherConfig(kind="text", pretrained="minilm", tiny=TinyTeacherConfig())


def test_config_checks_packaged_names_and_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="'efficientnet-lite0' is a vision model, not a text teacher"):
        TeacherConfig(kind="text", pretrained="efficientnet-lite0")
    with pytest.raises(ValidationError, match="'minilm' is a text model, not a clip teacher"):
        TeacherConfig(kind="clip", pretrained="minilm")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TeacherConfig.model_validate({"kind": "text", "pretrained": "minilm", "pooling": "cls"})
    with pytest.raises(ValidationError):
        TeacherConfig(kind="audio", pretrained="x")


def test_config_from_yaml_like_dict() -> None:
    raw = {"kind": "vision", "pretrained": "efficientnet-lite0", "image_size": 96}
    cfg = TeacherConfig.model_validate(raw)
    assert (cfg.kind, cfg.pretrained, cfg.image_size, cfg.max_length, cfg.tiny) == (
        "vision",
        "efficientnet-lite0",
        96,
        40,
        None,
    )


@pytest.mark.parametrize(
    ("kind", "cls", "task"),
    [
        ("clip", CLIPTeacher, None),
        ("vision", VisionTeacher, None),
        ("text", TextTeacher, None),
        ("fusion", FusionTeacher, "vcr"),
    ],
)
def test_build_tiny_teacher_of_each_kind(kind: str, cls: type, task: str | None) -> None:
    teacher = build_teacher(TeacherConfig(kind=kind, tiny=TinyTeacherConfig(), max_length=24), task=task)
    assert isinstance(teacher, cls) and teacher.kind == kind
    assert teacher.processor.max_length == 24
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert len(teacher.fingerprint()) == 64


def test_build_packaged_teachers() -> None:
    text = build_teacher(TeacherConfig(kind="text", pretrained="minilm", max_length=16))
    assert isinstance(text, TextTeacher) and text.encoder.config.hidden_size == 384
    assert text.processor.max_length == 16
    vision = build_teacher(TeacherConfig(kind="vision", pretrained="efficientnet-lite0", image_size=96))
    assert isinstance(vision, VisionTeacher) and vision.processor.image_size == (96, 96)


@pytest.mark.parametrize("kind", ["clip", "vision", "text", "fusion"])
def test_missing_checkpoint_is_a_config_error(kind: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        build_teacher(TeacherConfig(kind=kind, pretrained=str(tmp_path / "nowhere")), task="vqa")


def test_fusion_teacher_needs_the_task() -> None:
    with pytest.raises(ConfigError, match="a fusion teacher needs the task"):
        build_teacher(TeacherConfig(kind="fusion", tiny=TinyTeacherConfig()))


def test_checkpoint_with_missing_weights_is_refused(tmp_path: Path) -> None:
    """A weight absent from the checkpoint would be random on every load: refused, not guessed."""
    teacher = build_teacher(TeacherConfig(kind="text", tiny=TinyTeacherConfig()))
    teacher.save_pretrained(tmp_path / "bert")
    weights = load_file(tmp_path / "bert" / "model.safetensors")
    del weights["encoder.layer.0.output.dense.weight"]
    save_file(weights, tmp_path / "bert" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="lacks 1 weights"):
        TextTeacher.from_pretrained(tmp_path / "bert")


def test_weights_digest_by_hand() -> None:
    """sha256 over ``name|dtype|shape|`` then the raw bytes of each tensor, in name order."""
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.fill_(0.5)
    expected = hashlib.sha256()
    expected.update(b"bias|torch.float32|(1,)|" + torch.tensor([0.5]).numpy().tobytes())
    expected.update(b"weight|torch.float32|(1, 2)|" + torch.tensor([1.0, 2.0]).numpy().tobytes())
    assert weights_digest(layer) == expected.hexdigest()
    with torch.no_grad():
        layer.bias.fill_(0.25)
    assert weights_digest(layer) != expected.hexdigest()


def test_config_description_ignores_where_and_how_the_model_was_loaded() -> None:
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    plain = BertConfig(**sizes)
    loaded = BertConfig(**sizes, architectures=["BertModel"], output_attentions=True)
    loaded._name_or_path = "/somewhere/bert"
    assert loaded.to_dict() != plain.to_dict()
    assert config_description(loaded) == config_description(plain)
    assert config_description(plain)["hidden_size"] == 32
    assert config_description(BertConfig(**{**sizes, "hidden_size": 64})) != config_description(plain)
