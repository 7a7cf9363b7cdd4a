"""The method registry and the base class every distillation method derives from.

A method owns its frozen teachers (kept out of ``parameters()`` and ``state_dict()``: they are never
trained nor checkpointed), its trainable projections and, where it has any, the statistics it
normalises targets with (buffers: checkpointed). The trainer calls :meth:`Method.setup` on one
batch, :meth:`Method.prepare` once (statistics over the training set), then per step
:meth:`Method.targets` (or reads the same tensors from the teacher cache) and :meth:`Method.losses`,
and adds the returned, already weighted, terms to the task loss.

:class:`Method` itself is the ``none`` baseline (no teachers, no extra loss) and holds the logit-KD
helpers; the feature methods ``kd``, ``clip_td`` and ``mad`` are in :mod:`vldistill.distill.features`,
DiDE in :mod:`vldistill.distill.dide`; :func:`vldistill.distill.methods.build_method` builds any of
them by name (importing that module registers them all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from vldistill.data.examples import TASK_KINDS, TaskExample
from vldistill.data.loader import Batch, ImageStore
from vldistill.distill.config import MethodConfig
from vldistill.distill.losses import logit_kd
from vldistill.distill.targets import TargetParts, image_part, pair_part, target_parts, teacher_targets, text_part
from vldistill.errors import ConfigError
from vldistill.models.outputs import StudentOutput

REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: make a method available to configs under ``name``."""

    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


class Method(nn.Module):
    """Base class: no teachers, no extra loss (the ``none`` baseline)."""

    name: ClassVar[str] = "none"
    needs_cross_attention: ClassVar[bool] = False
    default_logit_weight: ClassVar[float] = 0.0

    def __init__(
        self, cfg: MethodConfig, teachers: Mapping[str, nn.Module], task: str, answers: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.answers = list(answers) if answers is not None else None
        self._logit_maps: dict[str, torch.Tensor] = {}
        # A plain dict, not a ModuleDict: teachers are neither trained nor saved with the student.
        self._teachers: dict[str, nn.Module] = dict(teachers)
        self.projections = nn.ModuleDict()
        self.logit_weight = cfg.logit_weight if cfg.logit_weight is not None else self.default_logit_weight

    @property
    def teachers(self) -> dict[str, nn.Module]:
        return self._teachers

    def needs_candidates(self, name: str) -> bool:
        """Whether teacher ``name`` must score zero-shot candidates for this method."""
        return False

    def targets(self, batch: Batch) -> dict[str, dict[str, torch.Tensor]]:
        """Run every teacher live: teacher name -> its targets (see ``vldistill.distill.targets``)."""
        return self.targets_for(batch.examples, batch.images)

    def targets_for(
        self, examples: Sequence[TaskExample], images: Sequence[Sequence[Image.Image]]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """:meth:`targets` of any examples and their decoded images (the cache builder's entry)."""
        return {
            name: teacher_targets(
                t,
                examples,
                images,
                max_words=self.cfg.max_words,
                max_candidates=self.cfg.max_candidates,
                candidates=self.needs_candidates(name),
            )
            for name, t in self._teachers.items()
        }

    def target_parts(self) -> dict[str, TargetParts]:
        """Which parts of each teacher's targets are per image, per text, per example (the cache's layout)."""
        return {n: target_parts(t, candidates=self.needs_candidates(n)) for n, t in self._teachers.items()}

    def image_targets(self, task: str, images: Sequence[Image.Image]) -> dict[str, dict[str, torch.Tensor]]:
        """Per-image targets of ``N`` decoded images: teacher -> field -> ``(N, ...)`` (teachers with images)."""
        parts = self.target_parts()
        max_words = self.cfg.max_words
        return {
            n: image_part(t, task, images, max_words=max_words) for n, t in self._teachers.items() if parts[n].image
        }

    def text_targets(self, task: str, texts: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
        """Per-text targets of ``N`` texts: teacher -> field -> ``(N, ...)`` (teachers with texts)."""
        parts = self.target_parts()
        max_words = self.cfg.max_words
        return {n: text_part(t, task, texts, max_words=max_words) for n, t in self._teachers.items() if parts[n].text}

    def example_targets(
        self,
        examples: Sequence[TaskExample],
        images: Sequence[Sequence[Image.Image]] | None,
        image_embeds: Mapping[str, torch.Tensor],
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Per-example targets: teacher -> field -> ``(B, ...)`` (``{}`` for a teacher without any).

        ``images``: decoded images, needed when a teacher's ``pair`` part is ``"live"`` (else None);
        ``image_embeds``: teacher -> ``(B, I, E)`` stored image embeddings, for ``"candidates"``.
        """
        out = {}
        for name, parts in self.target_parts().items():
            out[name] = pair_part(
                self._teachers[name],
                parts,
                examples,
                images,
                image_embeds.get(name),
                max_words=self.cfg.max_words,
                max_candidates=self.cfg.max_candidates,
                candidates=self.needs_candidates(name),
            )
        return out

    def cache_settings(self) -> dict[str, Any]:
        """Everything besides teachers and data that changes the targets (part of the cache key)."""
        return {
            "max_words": self.cfg.max_words,
            "max_candidates": self.cfg.max_candidates,
            "candidates": sorted(n for n in self._teachers if self.needs_candidates(n)),
        }

    def setup(self, out: StudentOutput, targets: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Create the projections once the student's and teachers' widths are known (one batch)."""

    def prepare(
        self,
        examples: Sequence[TaskExample],
        cache: Any = None,
        *,
        store: ImageStore | None = None,
        batch_size: int = 32,
    ) -> None:
        """After :meth:`setup`, before training: fit what needs the training set (``examples``).

        ``cache`` is the open teacher cache (or None: run the teachers live on images from
        ``store``, in batches of ``batch_size``). The base method needs nothing.
        """

    def _map_teacher_logits(self, out: StudentOutput, targets: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Line up each fusion teacher's logits with the student's classes.

        A fine-tuned VQA teacher (e.g. ``dandelin/vilt-b32-finetuned-vqa``) has its own answer list; its
        logits are matched to the student's answers *by name*; answers it lacks get a logit of -1e4
        (probability 0). Other tasks have fixed classes, which must agree in number.
        """
        for name, t in targets.items():
            if "logits" not in t:
                continue
            teacher_answers = getattr(self._teachers[name], "answers", None)
            if self.answers is not None and teacher_answers is not None:
                where = {a: i for i, a in enumerate(teacher_answers)}
                self._logit_maps[name] = torch.tensor([where.get(a, -1) for a in self.answers])
                if not bool((self._logit_maps[name] >= 0).any()):
                    raise ConfigError(
                        f"teacher '{name}' shares no answer with the student's answer vocabulary; "
                        "fix: use a teacher fine-tuned on this dataset's answers"
                    )
            elif t["logits"].shape[-1] != out.logits.shape[-1]:
                raise ConfigError(
                    f"teacher '{name}' has {t['logits'].shape[-1]} classes, the student "
                    f"{out.logits.shape[-1]}; fix: use a teacher fine-tuned on this task"
                )

    def teacher_logits(self, name: str, logits: torch.Tensor) -> torch.Tensor:
        """``(B, C_student)`` teacher logits in the student's class order (see :meth:`_map_teacher_logits`)."""
        index = self._logit_maps.get(name)
        if index is None:
            return logits
        index = index.to(logits.device)
        picked = logits[:, index.clamp(min=0)]
        return picked.masked_fill(index < 0, -1e4)

    def soft_label_loss(self, name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Unweighted logit KD of teacher ``name``'s ``(B, C_t)`` logits into the student's ``(B, C)``.

        Multi-label VQA: sigmoid BCE summed over the answers and averaged over the batch, the scale of
        the VQA task loss (``task_loss``: ViLT's BCE x number of answers) and of DiDE's reference;
        other tasks: softmax KL (see :func:`~vldistill.distill.losses.logit_kd`, ``method.temperature``).
        """
        teacher = self.teacher_logits(name, teacher_logits).to(student_logits.dtype)
        if TASK_KINDS[self.task] == "multilabel":
            return logit_kd(student_logits, teacher, kind="sigmoid", temperature=self.cfg.temperature, classes="sum")
        return logit_kd(student_logits, teacher, kind="softmax", temperature=self.cfg.temperature)

    def losses(
        self, out: StudentOutput, batch: Batch, targets: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The weighted distillation terms (name -> scalar); the trainer adds the task loss."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What the plan prints about this method's switches."""
        return {"method": self.name}


register("none")(Method)
