"""Distillation methods, registered by name: ``none``, ``kd``, ``clip_td``, ``mad``, ``dide``.

A method owns its frozen teachers (kept out of ``parameters()`` and ``state_dict()``: they are never
trained nor checkpointed) and its trainable projections. The trainer calls :meth:`Method.targets`
(or reads the same tensors from the teacher cache) and then :meth:`Method.losses`, and adds the
returned, already weighted, terms to the task loss.

Feature methods (``kd``, ``clip_td``, ``mad``) share one implementation, :class:`FeatureDistillation`;
they differ in their teachers and in the defaults of two switches, as the papers differ:

================  ==============================  ==========================================
method            token selection (default)       per-instance weight (default)
================  ==============================  ==========================================
kd  (naive)       all tokens                      constant
clip_td           teacher_relevance (CLIP)        teacher_confidence (CLIP zero-shot)
mad               student_cls                     teacher_confidence if a teacher can score
                                                  candidates zero-shot, else student_confidence
================  ==============================  ==========================================

CLIP-TD (arXiv 2201.05729) selects tokens by their relevance to the other modality, which needs
a joint image-text space: CLIP's. MAD (arXiv 2204.10496) distils from *unimodal* encoders (e.g.
an ImageNet CNN and a text encoder) that have no joint space, so its default ranks tokens by the
cross-modal student's own [CLS] attention; the paper does not spell out the rule, this is our reading
(switch: ``method.selection``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from vldistill.data.examples import TASK_KINDS, TaskExample, view_index
from vldistill.data.loader import Batch
from vldistill.distill.align import pool_grid, pool_words
from vldistill.distill.config import MethodConfig
from vldistill.distill.losses import feature_distance, logit_kd, weighted_feature_loss
from vldistill.distill.selection import head_mean_cls_scores, relevance, selection_mask
from vldistill.distill.targets import teacher_targets
from vldistill.distill.weighting import confidence_weights, constant_weights
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

    def cache_settings(self) -> dict[str, Any]:
        """Everything besides teachers and data that changes the targets (part of the cache key)."""
        return {
            "max_words": self.cfg.max_words,
            "max_candidates": self.cfg.max_candidates,
            "candidates": sorted(n for n in self._teachers if self.needs_candidates(n)),
        }

    def setup(self, out: StudentOutput, targets: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Create the projections once the student's and teachers' widths are known (one batch)."""

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

    def losses(
        self, out: StudentOutput, batch: Batch, targets: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The weighted distillation terms (name -> scalar); the trainer adds the task loss."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What the plan prints about this method's switches."""
        return {"method": self.name}


register("none")(Method)


def comparison_grid(teacher: tuple[int, int], student: tuple[int, int]) -> tuple[int, int]:
    """The grid on which image tokens are compared: the coarser of the two (``align.py``).

    Pooling the finer side down, not stretching the coarser up, keeps the loss honest (no copied
    cells) and cheap: EfficientNet's 2x2 map at 64 px is compared on 4 cells, not on 64 stretched ones.
    """
    return teacher if teacher[0] * teacher[1] < student[0] * student[1] else student


def _gold_probability(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the student's own probability of the gold answer, detached."""
    logits = logits.detach().float()
    if TASK_KINDS[task] == "multilabel":
        gold = targets.argmax(dim=1)
        return torch.sigmoid(logits.gather(1, gold[:, None]).squeeze(1))
    return logits.softmax(dim=1).gather(1, targets.clamp(min=0)[:, None]).squeeze(1)


class FeatureDistillation(Method):
    """Token-feature distillation from unimodal teachers through learned projections.

    For each teacher and each modality it has: align (text word by word, images cell by cell on the
    student's grid), project the student's tokens to the teacher's width, select tokens per
    instance, take the per-instance distance, weight it per instance, and scale by
    ``feature_weight``. Term names are ``feature/<teacher>/<image|text>``.
    """

    default_selection: ClassVar[str] = "all"
    default_weighting: ClassVar[str] = "constant"

    def __init__(
        self, cfg: MethodConfig, teachers: Mapping[str, nn.Module], task: str, answers: Sequence[str] | None = None
    ) -> None:
        super().__init__(cfg, teachers, task, answers)
        if not teachers:
            raise ConfigError(f"method '{self.name}' needs at least one teacher; fix: add method.teachers")
        self.selection = cfg.selection or self.default_selection
        self.weighting = cfg.weighting or self._default_weighting()
        if self.weighting == "teacher_confidence" and not self._zero_shot_teachers():
            raise ConfigError(
                f"method '{self.name}': weighting teacher_confidence needs a teacher that scores candidates "
                "zero-shot (kind: clip); fix: add one or set method.weighting to student_confidence or constant"
            )

    def _zero_shot_teachers(self) -> list[str]:
        return [n for n, t in self._teachers.items() if getattr(t, "kind", "") == "clip"]

    def _default_weighting(self) -> str:
        return self.default_weighting

    def needs_candidates(self, name: str) -> bool:
        return self.weighting == "teacher_confidence" and name == self._zero_shot_teachers()[0]

    def setup(self, out: StudentOutput, targets: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        for name, t in targets.items():
            if "image_tokens" in t:
                self.projections[f"{name}_image"] = nn.Linear(out.image_tokens.shape[-1], t["image_tokens"].shape[-1])
            if "text_words" in t:
                self.projections[f"{name}_text"] = nn.Linear(out.text_tokens.shape[-1], t["text_words"].shape[-1])
        if self.logit_weight > 0 and not any("logits" in t for t in targets.values()):
            raise ConfigError("method.logit_weight > 0 needs a fusion teacher; fix: add one or set it to 0")
        self._map_teacher_logits(out, targets)

    def weights(
        self, out: StudentOutput, batch: Batch, targets: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> torch.Tensor:
        """``(B,)`` per-instance weights of the feature terms."""
        b = batch.targets.shape[0]
        cfg = self.cfg
        if self.weighting == "constant":
            return constant_weights(b, device=out.logits.device)
        if self.weighting == "student_confidence":
            w = _gold_probability(self.task, out.logits, batch.targets).clamp(min=cfg.weight_floor)
            return w / w.mean().clamp(min=1e-12) if cfg.weight_normalize else w
        t = targets[self._zero_shot_teachers()[0]]
        gold = torch.tensor([ex.gold_candidate for ex in batch.examples], device=out.logits.device)
        gold = torch.where(gold < cfg.max_candidates, gold, torch.full_like(gold, -1))
        return confidence_weights(
            t["candidate_logits"],
            t["candidate_mask"],
            gold,
            temperature=cfg.weight_temperature,
            floor=cfg.weight_floor,
            normalize=cfg.weight_normalize,
        )

    def _views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        s = batch.student
        return view_index(s.task, s.batch_size, s.n_images, s.n_texts)

    def _select(
        self, kind: str, student_scores: torch.Tensor | None, teacher_scores: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        if self.selection == "teacher_relevance" and teacher_scores is None:
            raise ConfigError(
                f"method '{self.name}': selection teacher_relevance needs a teacher with a joint image-text "
                f"space (kind: clip) to rank {kind} tokens; fix: set method.selection to student_cls or all"
            )
        if self.selection == "student_cls" and student_scores is None:
            raise ConfigError(
                f"method '{self.name}': selection student_cls needs a fusion student's [CLS] attention; "
                "fix: set method.selection to teacher_relevance or all"
            )
        return selection_mask(
            self.selection,
            mask=mask,
            teacher_scores=teacher_scores,
            student_cls_scores=student_scores,
            k=self.cfg.top_k,
            ratio=self.cfg.ratio,
        )

    def token_pairs(self, out: StudentOutput, batch: Batch, targets: Mapping[str, Mapping[str, torch.Tensor]]):
        """Yield ``(term, student (N,K,Dt) projected, teacher (N,K,Dt), selected (N,K) bool)`` per view."""
        img_ix, txt_ix = self._views(batch)
        img_ix, txt_ix = img_ix.to(out.logits.device), txt_ix.to(out.logits.device)
        cls_text = cls_image = None
        if out.cls_attention is not None:
            cls_text, cls_image = head_mean_cls_scores(out.cls_attention, out.text_tokens.shape[1])
        for name, t in targets.items():
            if "image_tokens" in t:
                grid = tuple(int(v) for v in t["image_grid"][0])
                cells = comparison_grid(grid, out.image_grid)
                teacher = pool_grid(t["image_tokens"].flatten(0, 1)[img_ix], grid, cells)
                student = pool_grid(out.image_tokens, out.image_grid, cells)
                mask = pool_grid(out.image_mask.float().unsqueeze(-1), out.image_grid, cells).squeeze(-1) > 0
                cls_cells = None
                if cls_image is not None:
                    cls_cells = pool_grid(cls_image.unsqueeze(-1), out.image_grid, cells).squeeze(-1)
                scores = None
                if "image_token_embeds" in t and "text_embeds" in t:
                    tok = pool_grid(t["image_token_embeds"].flatten(0, 1)[img_ix], grid, cells)
                    scores = relevance(tok, t["text_embeds"].flatten(0, 1)[txt_ix])
                sel = self._select("image", cls_cells, scores, mask)
                yield f"{name}/image", self.projections[f"{name}_image"](student), teacher, sel
            if "text_words" in t:
                w = self.cfg.max_words
                student_words, student_mask = pool_words(out.text_tokens, out.text_word_index, w)
                teacher = t["text_words"].flatten(0, 1)[txt_ix]
                mask = student_mask & t["text_word_mask"].flatten(0, 1)[txt_ix]
                scores = None
                if "text_word_embeds" in t and "image_embeds" in t:
                    scores = relevance(
                        t["text_word_embeds"].flatten(0, 1)[txt_ix], t["image_embeds"].flatten(0, 1)[img_ix]
                    )
                cls_words = None
                if cls_text is not None:
                    cls_words = pool_words(cls_text.unsqueeze(-1), out.text_word_index, w)[0].squeeze(-1)
                sel = self._select("text", cls_words, scores, mask)
                yield f"{name}/text", self.projections[f"{name}_text"](student_words), teacher, sel

    def losses(
        self, out: StudentOutput, batch: Batch, targets: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        b = batch.targets.shape[0]
        weights = self.weights(out, batch, targets)
        terms: dict[str, torch.Tensor] = {}
        for term, student, teacher, selected in self.token_pairs(out, batch, targets):
            per_view = feature_distance(student, teacher.to(student.dtype), selected, self.cfg.feature_loss)
            per_example = per_view.view(b, -1).mean(dim=1)
            terms[f"feature/{term}"] = self.cfg.feature_weight * weighted_feature_loss(per_example, weights)
        if self.logit_weight > 0:
            for name, t in targets.items():
                if "logits" in t:
                    kind = "sigmoid" if TASK_KINDS[self.task] == "multilabel" else "softmax"
                    teacher = self.teacher_logits(name, t["logits"]).to(out.logits.dtype)
                    kd = logit_kd(out.logits, teacher, kind=kind, temperature=self.cfg.temperature)
                    terms[f"logits/{name}"] = self.logit_weight * kd
        return terms

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "method": self.name,
            "selection": self.selection,
            "top_k": c.top_k,
            "ratio": c.ratio,
            "weighting": self.weighting,
            "feature_loss": c.feature_loss,
            "feature_weight": c.feature_weight,
        }


@register("kd")
class NaiveDistillation(FeatureDistillation):
    """The papers' baseline: all tokens, constant weight (plus logit KD when a fusion teacher is given)."""


@register("clip_td")
class CLIPTargetedDistillation(FeatureDistillation):
    """CLIP-TD (arXiv 2201.05729): CLIP teacher, tokens selected by relevance, confidence-weighted."""

    default_selection = "teacher_relevance"
    default_weighting = "teacher_confidence"

    def __init__(
        self, cfg: MethodConfig, teachers: Mapping[str, nn.Module], task: str, answers: Sequence[str] | None = None
    ) -> None:
        if not any(getattr(t, "kind", "") == "clip" for t in teachers.values()):
            raise ConfigError("method clip_td needs a teacher of kind clip; fix: add one under method.teachers")
        super().__init__(cfg, teachers, task, answers)


@register("mad")
class MultimodalAdaptiveDistillation(FeatureDistillation):
    """MAD (arXiv 2204.10496): several unimodal teachers at once, adaptive selection and weights."""

    default_selection = "student_cls"

    def _default_weighting(self) -> str:
        return "teacher_confidence" if self._zero_shot_teachers() else "student_confidence"


def build_method(
    cfg: MethodConfig, teachers: Mapping[str, nn.Module], task: str, answers: Sequence[str] | None = None
) -> Method:
    """The registered method named by ``cfg.name`` (``answers``: the student's VQA answer vocabulary)."""
    try:
        cls = REGISTRY[cfg.name]
    except KeyError:
        raise ConfigError(f"unknown method '{cfg.name}'; fix: use one of {', '.join(sorted(REGISTRY))}") from None
    return cls(cfg, teachers, task, answers)


# DiDE lives in its own module; importing it registers it.
from vldistill.distill import dide as _dide  # noqa: E402,F401
