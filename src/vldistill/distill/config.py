"""The ``method:`` section of an experiment config (validated by pydantic; unknown keys are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vldistill.errors import ConfigError
from vldistill.models.teachers.factory import TeacherConfig

METHOD_NAMES = ("none", "kd", "clip_td", "mad", "dide")
DEFAULT_RATIO = 0.5


class MethodConfig(BaseModel):
    """How to distil. Unset switches (``None``) take the method's own default (see each method)."""

    # The string under each field is its description (pydantic's attribute docstrings), in docs/config.md.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: Literal["none", "kd", "clip_td", "mad", "dide"] = "none"
    """``none`` (the task loss alone) | ``kd`` (naive distillation) | ``clip_td`` | ``mad`` | ``dide``."""
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    """Role name -> teacher; each unimodal teacher teaches the student's tokens of the modalities it has
    (CLIP both, a vision backbone images, a text encoder text); a fusion teacher its logits (and DiDE its
    attention)."""
    feature_weight: float = Field(1.0, ge=0)
    """Lambda: the weight of the feature-distillation terms, added to the task loss."""
    image_weight: float = Field(1.0, ge=0)
    """A factor on ``feature_weight`` for the image terms (0 drops them)."""
    text_weight: float = Field(1.0, ge=0)
    """A factor on ``feature_weight`` for the text terms (0 drops them)."""
    feature_loss: Literal["l1", "l2", "cosine"] = "cosine"
    """The per-token distance between projected student tokens and teacher tokens."""
    target_norm: Literal["none", "standardize", "layernorm"] = "none"
    """How teacher tokens are normalised before the distance (``vldistill.distill.normalize``): ``standardize``
    per channel with statistics of the training set's teacher tokens, ``layernorm`` per token."""
    student_layer: int = Field(-1, ge=-1)
    """Which student layer is distilled, as an index into transformers' ``hidden_states``: 0 the
    embeddings, ``k`` the output of layer ``k`` (1-based), -1 the model's output (``last_hidden_state``,
    after ViLT's final LayerNorm)."""
    selection: Literal["teacher_relevance", "student_cls", "all"] | None = None
    """Which tokens are distilled per instance: the top ones by the teacher's image-text relevance, by the
    student's [CLS] attention, or all (default: the method's; ``kd`` all)."""
    top_k: int | None = Field(None, ge=1)
    """Keep this many tokens per instance (or give ``ratio``; neither means ratio 0.5)."""
    ratio: float | None = Field(None, gt=0, le=1)
    """Keep this fraction of the tokens per instance (or give ``top_k``)."""
    weighting: Literal["teacher_confidence", "student_confidence", "constant"] | None = None
    """The per-instance weight: the teacher's zero-shot probability of the gold answer, the student's own
    (detached), or constant (default: the method's; ``kd`` constant)."""
    weight_temperature: float = Field(1.0, gt=0)
    """The softmax temperature of the confidence weights."""
    weight_floor: float = Field(0.1, ge=0, le=1)
    """The smallest per-instance confidence weight."""
    # A confidence is a probability whose batch mean sits far below 1 (issue 13: 0.32 on SNLI-VE, 0.25 on
    # VQA), so unnormalised clip_td ran at a third of kd's effective weight.
    weight_normalize: bool = True
    """Rescale the per-instance weights to mean 1 over the global batch, so that ``feature_weight`` means
    the same for every weighting and task and the weights only redistribute it across instances."""
    logit_weight: float | None = Field(None, ge=0)
    """The weight of logit KD from a fusion teacher (default 0, but 1 for ``dide``'s soft labels)."""
    temperature: float = Field(1.0, gt=0)
    """The temperature of logit KD."""
    attention_weight: float = Field(1.0, ge=0)
    """DiDE: the weight of the cross-modal attention KL (text-to-image and image-to-text, last layer)."""
    relevance_weight: float = Field(0.0, ge=0)
    """Feature methods with a CLIP teacher: distil the teacher's word-to-patch relevance into the student's
    text-to-image attention (``vldistill.distill.relevance``); 0: off (not part of the papers' objectives)."""
    relevance_temperature: float = Field(0.05, gt=0)
    """The temperature of the relevance softmax over patches (of word-patch cosines)."""
    relevance_layer: int = Field(-1, ge=-1)
    """The student layer whose text-to-image attention learns the relevance (-1 the last, ``k`` layer ``k``)."""
    max_words: int = Field(32, ge=1)
    """Words per text whose teacher tokens are kept as targets (text tokens are matched word by word)."""
    max_candidates: int = Field(16, ge=2)
    """Zero-shot candidates a teacher scores per example for its confidence (VQA: the gold answer and the
    most frequent answers of its type)."""

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
