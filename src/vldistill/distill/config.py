"""The ``method:`` section of an experiment config (validated by pydantic; unknown keys are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vldistill.models.teachers.factory import TeacherConfig

METHOD_NAMES = ("none", "kd", "clip_td", "mad", "dide")


class MethodConfig(BaseModel):
    """How to distil. Unset switches (``None``) take the method's own default (see each method).

    Attributes:
        name: ``none`` | ``kd`` | ``clip_td`` | ``mad`` | ``dide``.
        teachers: role name -> teacher config; each unimodal teacher teaches the student's tokens
            of the modalities it has (CLIP both, a vision backbone images, a text encoder text).
        feature_weight: lambda of the feature-distillation terms (added to the task loss).
        feature_loss: per-token distance after the learned projection.
        selection: ``teacher_relevance`` | ``student_cls`` | ``all``; top_k or ratio: how many.
        weighting: ``teacher_confidence`` (zero-shot probability of the gold answer) |
            ``student_confidence`` (the student's own, detached) | ``constant``.
        logit_weight / temperature: logit KD from a fusion teacher (default 0, but 1 for dide's soft labels).
        attention_weight: DiDE's cross-modal attention KL weight.
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["none", "kd", "clip_td", "mad", "dide"] = "none"
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    feature_weight: float = Field(1.0, ge=0)
    feature_loss: Literal["l1", "l2", "cosine"] = "cosine"
    selection: Literal["teacher_relevance", "student_cls", "all"] | None = None
    top_k: int | None = Field(None, ge=1)
    ratio: float | None = Field(0.5, gt=0, le=1)
    weighting: Literal["teacher_confidence", "student_confidence", "constant"] | None = None
    weight_temperature: float = Field(1.0, gt=0)
    weight_floor: float = Field(0.1, ge=0, le=1)
    weight_normalize: bool = False
    logit_weight: float | None = Field(None, ge=0)
    temperature: float = Field(1.0, gt=0)
    attention_weight: float = Field(1.0, ge=0)
    max_words: int = Field(32, ge=1)
    max_candidates: int = Field(16, ge=2)
