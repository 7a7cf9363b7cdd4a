"""A fine-tuned fusion encoder (ViLT) as DiDE's frozen teacher.

The teacher is the fusion student's own module (``vldistill.models.fusion.FusionStudent``) loaded from
a fine-tuned checkpoint: a directory saved by a vldistill run or a Hugging Face ViLT directory / hub
id (``dandelin/vilt-b32-finetuned-vqa``), so teacher and student compute logits and cross-modal
attention with one code path. A checkpoint must hold the head of the requested task (its
``architectures`` entry): a teacher with a freshly initialised head would teach noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, ViltConfig

from vldistill.data.examples import TASK_KINDS
from vldistill.errors import ConfigError
from vldistill.models.fusion import FusionStudent, _hf_class, task_config_kwargs
from vldistill.models.outputs import FusionTeacherOutput, ModelInputs
from vldistill.models.processing import DEFAULT_MEAN, DEFAULT_STD, Processor
from vldistill.models.students import STUDENT_FILE
from vldistill.models.teachers.base import Teacher, config_description, save_processor
from vldistill.models.teachers.text import minilm_tokenizer


class FusionTeacher(Teacher):
    """A frozen ViLT with a task head; ``self.student`` is the ``FusionStudent`` it runs."""

    kind = "fusion"

    def __init__(self, student: FusionStudent, processor: Processor) -> None:
        super().__init__(processor)
        self.student = student
        self.freeze()

    @property
    def answers(self) -> list[str] | None:
        """The VQA answer of each logit (``id2label``), None for the other tasks."""
        if self.task != "vqa":
            return None
        config = self.student.config
        return [config.id2label[i] for i in range(config.num_labels)]

    @property
    def task(self) -> str:
        return self.student.task

    @classmethod
    def from_config(
        cls,
        config: ViltConfig,
        task: str,
        num_labels: int,
        processor: Processor,
        answers: list[str] | None = None,
    ) -> FusionTeacher:
        """A randomly initialised ViLT with ``task``'s head (tests)."""
        return cls(FusionStudent.from_config(config, task, num_labels, answers), processor)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, task: str, image_size: int | None = None, max_length: int = 40
    ) -> FusionTeacher:
        """From a fine-tuned ViLT checkpoint whose head fits ``task``; labels come from its config.

        A directory written by ``save_student`` (it has ``vldistill_student.json``) must be a fusion
        student of ``task``; it carries no tokenizer, so it gets the BERT-uncased WordPiece that
        vldistill's ViLT students use (the packaged MiniLM's, ViLT's own vocabulary) and 0.5 mean/std.
        """
        name = str(name_or_path)
        if task not in TASK_KINDS:
            raise ConfigError(f"unknown task {task!r}; fix: use one of {sorted(TASK_KINDS)}")
        meta_file = Path(name) / STUDENT_FILE
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if (meta.get("kind"), meta.get("task")) != ("fusion", task):
                raise ConfigError(
                    f"{meta_file}: a {meta.get('kind')} student of {meta.get('task')}, not a fusion "
                    f"student of {task}; fix: give a fusion student fine-tuned on {task}"
                )
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"fusion teacher {name!r}: cannot load a model config ({err}); fix: give a fine-tuned "
                "ViLT directory or a hub id available offline"
            ) from err
        expected = _hf_class(task).__name__
        if expected not in (config.architectures or []):
            raise ConfigError(
                f"fusion teacher {name!r} holds {config.architectures}, not the {task} head {expected}; "
                f"fix: give a ViLT checkpoint fine-tuned on {task}"
            )
        answers = [config.id2label[i] for i in range(config.num_labels)] if task == "vqa" else None
        head = task_config_kwargs(task, config.num_labels, answers)
        needed = {"num_labels": len(head["id2label"]), "num_images": head.get("num_images")}
        for key, value in needed.items():
            if value is not None and getattr(config, key) != value:
                raise ConfigError(
                    f"fusion teacher {name!r} has {key}={getattr(config, key)}, the {task} head needs "
                    f"{value}; fix: give a ViLT checkpoint fine-tuned on {task}"
                )
        # A teacher's head must be trained: nothing may start anew.
        student = FusionStudent.from_pretrained(
            name, task, config.num_labels, answers, key="fusion teacher", new_head_ok=False
        )
        if meta_file.is_file() and not (Path(name) / "tokenizer_config.json").is_file():
            size = image_size or config.image_size
            processor = Processor(minilm_tokenizer(), size, DEFAULT_MEAN, DEFAULT_STD, max_length=max_length)
        else:
            processor = Processor.from_pretrained(name, image_size=image_size, max_length=max_length)
        return cls(student, processor)

    def save_pretrained(self, directory: str | Path) -> None:
        self.student.save_pretrained(directory)
        save_processor(self.processor, directory)

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, **config_description(self.student.config)}

    @torch.no_grad()
    def forward(self, inputs: ModelInputs) -> FusionTeacherOutput:
        """logits ``(B, C)``; last-layer cross attention per view (text_to_image ``(B * V, H, L, P)``,
        image_to_text ``(B * V, H, P, L)``, re-normalised over the other modality's real keys);
        matching_logits ``(B * V,)`` for the retrieval head (vcr: one score per candidate view),
        else None."""
        out = self.student(inputs, output_cross_attention=True)
        matching = out.logits.reshape(-1) if self.task == "vcr" else None
        return FusionTeacherOutput(logits=out.logits, cross_attention=out.cross_attention, matching_logits=matching)
