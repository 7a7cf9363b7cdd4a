from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from vldistill.errors import ConfigError
from vldistill.models.dual import DualEncoderStudent
from vldistill.models.fusion import FusionStudent
from vldistill.models.students import STUDENT_FILE, StudentConfig, build_student, load_student, save_student


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
    with pytest.raises(ConfigError, match="written by save_student"):
        load_student(tmp_path / "nothing")
