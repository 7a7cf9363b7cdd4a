"""The ``method:`` section of an experiment config (validated by pydantic; unknown keys are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vldistill.errors import ConfigError
from vldistill.models.teachers.factory import TeacherConfig

METHOD_NAMES = ("none", "kd", "clip_td", "mad", "dide")
DEFAULT_RATIO = 0.5


class MethodConfig(BaseModel):
    """How to distil. Unset switches (``None``) take the method's own default (see each method).

    Attributes:
        name: ``none`` | ``kd`` | ``clip_td`` | ``mad`` | ``dide``.
        teachers: role name -> teacher config; each unimodal teacher teaches the student's tokens
            of the modalities it has (CLIP both, a vision backbone images, a text encoder text).
        feature_weight: lambda of the feature-distillation terms (added to the task loss).
        image_weight / text_weight: per-modality factors on ``feature_weight`` (the image term weighs
            ``feature_weight * image_weight``); 0 drops that modality's terms.
        feature_loss: per-token distance after the learned projection.
        target_norm: how teacher tokens are normalised before the distance
            (``vldistill.distill.normalize``): ``none`` | ``standardize`` (per channel, statistics of
            the training set's teacher tokens) | ``layernorm`` (per token, no statistics).
        student_layer: which student layer is distilled, as an index into transformers'
            ``hidden_states``: 0 = the embeddings, ``k`` = the output of layer ``k`` (1-based),
            -1 = the model's output (``last_hidden_state``, after ViLT's final LayerNorm; as before).
        selection: ``teacher_relevance`` | ``student_cls`` | ``all``; top_k or ratio: how many
            (at most one of them; neither means ratio 0.5).
        weighting: ``teacher_confidence`` (zero-shot probability of the gold answer) |
            ``student_confidence`` (the student's own, detached) | ``constant``.
        weight_normalize: rescale the per-instance weights to mean 1 over the global batch (default). A
            confidence is a probability whose batch mean sits far below 1 (issue 13: 0.32 on SNLI-VE,
            0.25 on VQA), so unnormalised ``clip_td`` ran at a third of ``kd``'s effective weight;
            normalised, ``feature_weight`` means the same for every weighting and task, and the
            weights only redistribute it across instances.
        logit_weight / temperature: logit KD from a fusion teacher (default 0, but 1 for dide's soft labels).
        attention_weight: DiDE's cross-modal attention KL weight.
        relevance_weight / relevance_temperature / relevance_layer: feature methods with a CLIP teacher:
            distil the teacher's word-to-patch relevance (softmax over patches of word-patch cosines at
            this temperature) into the student's text-to-image attention of this layer (-1 = last,
            ``k`` = layer ``k``, 1-based); ``vldistill.distill.relevance``. Default 0: off (not part of
            the papers' objectives; reported as its own row).
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["none", "kd", "clip_td", "mad", "dide"] = "none"
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    feature_weight: float = Field(1.0, ge=0)
    image_weight: float = Field(1.0, ge=0)
    text_weight: float = Field(1.0, ge=0)
    feature_loss: Literal["l1", "l2", "cosine"] = "cosine"
    target_norm: Literal["none", "standardize", "layernorm"] = "none"
    student_layer: int = Field(-1, ge=-1)
    selection: Literal["teacher_relevance", "student_cls", "all"] | None = None
    top_k: int | None = Field(None, ge=1)
    ratio: float | None = Field(None, gt=0, le=1)
    weighting: Literal["teacher_confidence", "student_confidence", "constant"] | None = None
    weight_temperature: float = Field(1.0, gt=0)
    weight_floor: float = Field(0.1, ge=0, le=1)
    weight_normalize: bool = True
    logit_weight: float | None = Field(None, ge=0)
    temperature: float = Field(1.0, gt=0)
    attention_weight: float = Field(1.0, ge=0)
    relevance_weight: float = Field(0.0, ge=0)
    relevance_temperature: float = Field(0.05, gt=0)
    relevance_layer: int = Field(-1, ge=-1)
    max_words: int = Field(32, ge=1)
    max_candidates: int = Field(16, ge=2)

    @model_validator(mode="after")
    def _one_token_count(self) -> MethodConfig:
        if self.relevance_layer == 0:
            raise ConfigError(
                "method.relevance_layer 0 names the embeddings, which have no attention; fix: use -1 (the last "
                "layer) or a layer number from 1"
            )
        if self.top_k is not None and self.ratio is not None:
            raise ConfigError(
                f"method.top_k ({self.top_k}) and method.ratio ({self.ratio}) are both set, but they are two "
                "ways to say how many tokens to keep; fix: remove one of them (with neither, ratio is "
                f"{DEFAULT_RATIO})"
            )
        return self

    def token_count(self) -> tuple[int | None, float | None]:
        """``(top_k, ratio)`` as token selection uses them: exactly one is set (default ratio 0.5)."""
        if self.top_k is not None:
            return self.top_k, None
        return None, self.ratio if self.ratio is not None else DEFAULT_RATIO
