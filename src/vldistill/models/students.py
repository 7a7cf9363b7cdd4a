"""The one way to make, save and load a student: ``StudentConfig`` -> ``build_student``.

A student is a pretrained checkpoint (hub id or directory, loaded by transformers' ``from_pretrained``)
or a tiny randomly initialised model from the size fields. A saved student is a Hugging Face directory
(``config.json`` + ``model.safetensors``) plus ``vldistill_student.json`` (kind, task, answers);
``load_student`` goes through the same ``from_pretrained`` code as a user's hub id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn
from transformers import BertConfig, ViltConfig, ViTConfig

from vldistill.errors import ConfigError
from vldistill.models.dual import DualEncoderStudent, load_tower, tower_from_config
from vldistill.models.fusion import FusionStudent, task_config_kwargs
from vldistill.models.processing import Processor

STUDENT_FILE = "vldistill_student.json"


class StudentConfig(BaseModel):
    """Which student to build.

    ``pretrained`` (fusion: a ViLT checkpoint; dual: a saved dual student) wins over the tiny-size
    fields; for a dual student ``image_pretrained`` / ``text_pretrained`` pick each tower (a ViT or
    CLIP checkpoint; any Hugging Face text encoder), a missing one is built tiny.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["fusion", "dual"] = "fusion"
    pretrained: str | None = None
    image_pretrained: str | None = None
    text_pretrained: str | None = None
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    image_size: int = 64
    patch_size: int = 8
    max_text_len: int = 40
    vocab_size: int = 30522  # the MiniLM / BERT-uncased WordPiece vocabulary

    @model_validator(mode="after")
    def _check(self) -> StudentConfig:
        if self.kind == "fusion" and (self.image_pretrained or self.text_pretrained):
            raise ConfigError("student.image_pretrained/text_pretrained are for kind 'dual'; fix: use pretrained")
        if self.pretrained and (self.image_pretrained or self.text_pretrained):
            raise ConfigError("student: give pretrained or image_pretrained/text_pretrained, not both")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"student.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; "
                "fix: make it one"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"student.hidden_size {self.hidden_size} is not a multiple of num_heads")
        return self

    def _sizes(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
        }


def _tiny_vilt(cfg: StudentConfig) -> ViltConfig:
    return ViltConfig(
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_text_len,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        **cfg._sizes(),
    )


def build_student(cfg: StudentConfig, task: str, num_labels: int, answers: list[str] | None = None) -> nn.Module:
    """A ``FusionStudent`` or ``DualEncoderStudent`` for ``task``.

    ``num_labels`` is the answer-vocabulary size for vqa (``answers`` its labels); the other tasks
    have a fixed head (3 classes, 4 candidates, 2 classes).
    """
    if cfg.kind == "fusion":
        if cfg.pretrained:
            return FusionStudent.from_pretrained(cfg.pretrained, task, num_labels, answers)
        return FusionStudent.from_config(_tiny_vilt(cfg), task, num_labels, answers)
    if cfg.pretrained:
        return _load_dual(cfg.pretrained, task, num_labels, answers)
    if cfg.image_pretrained:
        vision = load_tower(cfg.image_pretrained, "image")
    else:
        vision = tower_from_config(ViTConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, **cfg._sizes()))
    if cfg.text_pretrained:
        text = load_tower(cfg.text_pretrained, "text")
    else:
        text = tower_from_config(
            BertConfig(vocab_size=cfg.vocab_size, max_position_embeddings=max(cfg.max_text_len, 64), **cfg._sizes())
        )
    return DualEncoderStudent.from_towers(vision, text, task, num_labels, answers)


def _load_dual(path: str | Path, task: str, num_labels: int, answers: list[str] | None) -> DualEncoderStudent:
    kwargs = task_config_kwargs(task, num_labels, answers)
    kwargs.pop("num_images", None)
    # A saved student fine-tuned on another task or answer set keeps its towers and gets a new head.
    return DualEncoderStudent.from_pretrained(
        str(path), task=task, attn_implementation="eager", ignore_mismatched_sizes=True, **kwargs
    )


def save_student(model: nn.Module, directory: str | Path, processor: Processor | None = None) -> Path:
    """Write the student as a Hugging Face directory plus ``vldistill_student.json``.

    With ``processor``, its tokenizer and image settings are written too, so the directory is all a
    user needs (``Processor.from_pretrained(directory)`` and ``load_student(directory)``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, FusionStudent):
        kind, task, config = "fusion", model.task, model.config
    elif isinstance(model, DualEncoderStudent):
        kind, task, config = "dual", model.task, model.config
    else:
        raise TypeError(f"not a vldistill student: {type(model).__name__}")
    model.save_pretrained(directory)
    answers = [config.id2label[i] for i in range(config.num_labels)] if task == "vqa" else None
    meta = {"kind": kind, "task": task, "num_labels": config.num_labels, "answers": answers}
    (directory / STUDENT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if processor is not None:
        processor.save_pretrained(directory)
    return directory


def load_student(directory: str | Path) -> nn.Module:
    """The student that ``save_student`` wrote to ``directory``."""
    meta_path = Path(directory) / STUDENT_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path}: not found; fix: give a directory written by save_student")
    meta = json.loads(meta_path.read_text())
    cfg = StudentConfig(kind=meta["kind"], pretrained=str(directory))
    return build_student(cfg, meta["task"], meta["num_labels"], meta.get("answers"))
