from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel, ViltConfig, ViltForMaskedLM, ViTConfig

from vldistill.errors import ConfigError
from vldistill.models.dual import DualEncoderStudent, tower_from_config
from vldistill.models.fusion import FusionStudent
from vldistill.models.students import (
    STUDENT_FILE,
    StudentConfig,
    build_student,
    check_text_length,
    load_student,
    save_student,
    text_positions,
)


def test_kinds_build_their_class(tiny_sizes) -> None:
    assert isinstance(build_student(StudentConfig(kind="fusion", **tiny_sizes), "snli_ve", 3), FusionStudent)
    assert isinstance(build_student(StudentConfig(kind="dual", **tiny_sizes), "snli_ve", 3), DualEncoderStudent)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "fusion", "text_pretrained": "x"}, "are for kind 'dual'"),
        ({"kind": "dual", "pretrained": "x", "image_pretrained": "y"}, "not both"),
        ({"image_size": 30, "patch_size": 8}, "not a multiple of patch_size"),
        ({"hidden_size": 30, "num_heads": 4}, "not a multiple of num_heads"),
    ],
)
def test_inconsistent_config_is_a_config_error(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StudentConfig(**fields)


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        StudentConfig(hidden=32)


def test_vqa_needs_its_answers(tiny_sizes) -> None:
    with pytest.raises(ConfigError, match="answer vocabulary"):
        build_student(StudentConfig(**tiny_sizes), "vqa", 3, None)


def test_saved_metadata_and_missing_directory(tiny_sizes, tmp_path: Path) -> None:
    model = build_student(StudentConfig(kind="fusion", **tiny_sizes), "vqa", 2, ["yes", "no"])
    save_student(model, tmp_path / "s")
    meta = (tmp_path / "s" / STUDENT_FILE).read_text()
    assert '"kind": "fusion"' in meta and '"answers": [\n    "yes",\n    "no"\n  ]' in meta
    with pytest.raises(ConfigError) as info:
        load_student(tmp_path / "nothing")
    assert str(info.value) == (
        f"{tmp_path / 'nothing'}: not a vldistill student folder (no {STUDENT_FILE}); fix: give a student that "
        "vldistill trained (a run folder or its final/); to start from a Hugging Face checkpoint, train it "
        f"first (vldistill train CONFIG --set student.pretrained={tmp_path / 'nothing'})"
    )


def _drop_weight(folder: Path, name: str) -> None:
    weights = load_file(folder / "model.safetensors")
    del weights[name]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_bert_folder_is_not_a_vilt_student(minilm_path: Path) -> None:
    """It used to load as a ViLT whose every weight was random (NaN losses in plan)."""
    with pytest.raises(ConfigError) as err:
        build_student(StudentConfig(pretrained=str(minilm_path)), "vqa", 2, ["yes", "no"])
    assert str(err.value) == (
        f"student.pretrained '{minilm_path}' is a bert checkpoint, not ViLT (model_type 'vilt'); fix: give a ViLT "
        "checkpoint (e.g. dandelin/vilt-b32-mlm) or a fusion student saved by vldistill"
    )


def test_missing_backbone_weights_are_refused(tiny_sizes, tmp_path: Path) -> None:
    save_student(build_student(StudentConfig(**tiny_sizes), "vqa", 2, ["yes", "no"]), tmp_path / "s")
    _drop_weight(tmp_path / "s", "vilt.encoder.layer.0.output.dense.weight")
    with pytest.raises(ConfigError) as err:
        build_student(StudentConfig(pretrained=str(tmp_path / "s")), "vqa", 2, ["yes", "no"])
    assert str(err.value) == (
        f"student.pretrained '{tmp_path / 's'}' lacks 1 weights (vilt.encoder.layer.0.output.dense.weight), which "
        "would start random; fix: give a ViLT checkpoint with all its weights (only the vqa head may be new)"
    )


def test_a_new_task_head_on_a_pretrained_backbone_is_allowed(tiny_sizes, tmp_path: Path) -> None:
    """A pre-trained ViLT (MLM and ITM heads, no VQA head) and a student of another task both fine-tune."""
    config = ViltConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    pretrained = ViltForMaskedLM(config)
    pretrained.save_pretrained(tmp_path / "mlm")
    student = build_student(StudentConfig(pretrained=str(tmp_path / "mlm")), "vqa", 3, ["a", "b", "c"])
    backbone = pretrained.vilt.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in student.model.vilt.state_dict().items() if k in backbone)
    assert student.model.vilt.pooler is not None and student.model.classifier[-1].out_features == 3
    save_student(student, tmp_path / "vqa")
    ve = build_student(StudentConfig(pretrained=str(tmp_path / "vqa")), "snli_ve", 3)
    assert torch.equal(ve.model.vilt.pooler.dense.weight, student.model.vilt.pooler.dense.weight)


def test_dual_checkpoints_are_checked(tiny_student, minilm_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a bert checkpoint, not a dual student saved by vldistill"):
        build_student(StudentConfig(kind="dual", pretrained=str(minilm_path)), "snli_ve", 3)
    save_student(tiny_student("dual", "snli_ve"), tmp_path / "dual")
    _drop_weight(tmp_path / "dual", "fusion.0.weight")
    with pytest.raises(ConfigError, match=r"lacks 1 weights \(fusion.0.weight\)"):
        build_student(StudentConfig(kind="dual", pretrained=str(tmp_path / "dual")), "snli_ve", 3)
    # A text tower without a pooler (RoBERTa checkpoints ship none) is fine; one without a layer is not.
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path / "bert")
    _drop_weight(tmp_path / "bert", "pooler.dense.weight")
    build_student(StudentConfig(kind="dual", text_pretrained=str(tmp_path / "bert")), "snli_ve", 3)
    _drop_weight(tmp_path / "bert", "encoder.layer.0.output.dense.weight")
    with pytest.raises(ConfigError, match=r"^student.text_pretrained '.*' lacks 1 weights \(encoder.layer.0.output"):
        build_student(StudentConfig(kind="dual", text_pretrained=str(tmp_path / "bert")), "snli_ve", 3)


def test_max_text_len_beyond_the_positions_is_a_config_error(tiny_sizes, tmp_path: Path) -> None:
    save_student(build_student(StudentConfig(**{**tiny_sizes, "max_text_len": 12}), "vcr", 4), tmp_path / "s")
    assert text_positions(build_student(StudentConfig(pretrained=str(tmp_path / "s"), max_text_len=12), "vcr", 4)) == 12
    with pytest.raises(ConfigError) as err:
        build_student(StudentConfig(pretrained=str(tmp_path / "s"), max_text_len=40), "vcr", 4)
    assert str(err.value) == (
        f"student.max_text_len 40 is more than the 12 text positions of student.pretrained '{tmp_path / 's'}'; "
        "fix: --set student.max_text_len=12"
    )


def test_roberta_positions_start_after_the_padding_index(tiny_sizes) -> None:
    """RoBERTa numbers positions from padding_idx + 1: 20 rows with pad id 1 read 18 tokens."""
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    text = RobertaModel(RobertaConfig(vocab_size=50, max_position_embeddings=20, pad_token_id=1, **sizes))
    vision = tower_from_config(ViTConfig(image_size=32, patch_size=8, **sizes))
    student = DualEncoderStudent.from_towers(vision, text, "snli_ve", 3)
    assert text_positions(student) == 18
    check_text_length(student, 18, "student.text_pretrained 'r'")
    with pytest.raises(ConfigError, match="more than the 18 text positions of student.text_pretrained 'r'"):
        check_text_length(student, 19, "student.text_pretrained 'r'")
