"""The configuration of DiDE's pre-training stage (``vldistill pretrain CONFIG``): pydantic, one YAML file.

See :mod:`vldistill.distill.pretrain` for what the stage does and ``configs/dide-pretrain-demo.yaml``
for an example. An unknown key or a wrong type is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vldistill.config import _format_validation, _set_path
from vldistill.distill.pretrain_data import CaptionDataConfig
from vldistill.errors import ConfigError
from vldistill.models.students import StudentConfig
from vldistill.models.teachers.factory import TeacherConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class PretrainLossConfig(_Strict):
    """The pre-training loss: cross-modal attention KL plus image-text matching soft labels (``distill.pretrain``)."""

    attention_weight: float = Field(1.0, ge=0)
    """The weight of the text-to-image and image-to-text attention KL (last layer, all views)."""
    itm_weight: float = Field(1.0, ge=0)
    """The weight of the image-text matching soft labels."""
    itm_loss: Literal["softmax", "sigmoid"] = "softmax"
    """``softmax``: KL of teacher and student softmax over each image's candidate captions (ViLT's retrieval
    head); ``sigmoid``: BCE against ``sigmoid(teacher logit / T)``, for calibrated matching scores."""
    temperature: float = Field(1.0, gt=0)
    """The soft labels' temperature."""
    negatives: int = Field(1, ge=1)
    """Mismatched captions (of other images of the batch) per image: views per image = 1 + negatives."""


class PretrainTrainConfig(_Strict):
    """Optimisation (the fields mean what they mean in ``train:`` of an experiment)."""

    epochs: int = Field(1, ge=1)
    """Passes over the caption pairs."""
    max_steps: int | None = Field(None, ge=1)
    """At most this many optimizer steps."""
    batch_size: int = Field(32, ge=2)
    """Image-caption pairs per step (the other images' captions are the negatives; the last, shorter batch
    is dropped)."""
    lr: float = Field(1e-4, gt=0)
    """AdamW's peak learning rate."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW's weight decay (not on biases and norms)."""
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    """The fraction of the steps with a linear warmup; the learning rate then decays linearly to 0."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this (``null``: no clipping)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """accelerate's mixed precision, on a GPU."""
    seed: int = 0
    """The seed of initialisation, pair order and the ``max_pairs`` subset."""
    checkpoint_every: int | None = Field(None, ge=1)
    """Also checkpoint every this many optimizer steps (and at every epoch's end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest checkpoints to keep."""
    log_every: int = Field(10, ge=1)
    """Log the learning rate, loss terms and gradient norm every this many optimizer steps."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes."""
    threads: int | None = Field(None, ge=1)
    """torch's CPU threads for this run (``null``: torch's default)."""


# Keys a resumed pre-training run may change (see vldistill.training.train.HARMLESS_CHANGES).
HARMLESS_CHANGES = frozenset(
    {
        "name",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.num_workers",
        "train.threads",
    }
)


class DidePretrainConfig(_Strict):
    """One pre-training run: ``vldistill pretrain CONFIG`` (see ``configs/dide-pretrain-demo.yaml``)."""

    name: str = "dide-pretrain"
    """The run's name (its trackers' run name)."""
    data: CaptionDataConfig = Field(default_factory=CaptionDataConfig)
    """The image-caption pairs."""
    student: StudentConfig = Field(default_factory=lambda: StudentConfig(kind="dual"))
    """The dual-encoder student (keys of an experiment's ``student``; ``kind`` must be ``dual``)."""
    teacher: TeacherConfig
    """The fusion teacher with an image-text matching head (keys of a ``method.teachers`` entry; ``kind``
    must be ``fusion``), e.g. ``dandelin/vilt-b32-finetuned-coco``."""
    loss: PretrainLossConfig = Field(default_factory=PretrainLossConfig)
    """The loss."""
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig)
    """Optimisation, checkpoints and logging."""

    @model_validator(mode="after")
    def _kinds(self) -> DidePretrainConfig:
        if self.student.kind != "dual":
            raise ValueError("DiDE pre-training trains a dual-encoder student; set student.kind: dual")
        if self.teacher.kind != "fusion":
            raise ValueError("the teacher must be a fusion encoder with a matching head; set teacher.kind: fusion")
        return self


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> DidePretrainConfig:
    """Read and validate a pre-training YAML; ``overrides`` are ``key.path=value`` strings."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; fix: check the path, or use --preset NAME") from None
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a valid UTF-8 YAML file ({err}); fix: correct the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping; fix: see configs/dide-pretrain-demo.yaml")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' has no '='; fix: write key.path=value, e.g. train.epochs=1")
        try:
            _set_path(raw, key.strip(), yaml.safe_load(value))
        except yaml.YAMLError:
            raise ConfigError(f"override {key.strip()}: value {value!r} is not valid YAML; fix: quote it") from None
    try:
        return DidePretrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, str(path))) from None
