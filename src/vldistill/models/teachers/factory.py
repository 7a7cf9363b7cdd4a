"""One way in: a validated ``TeacherConfig`` (a YAML ``method.teachers`` entry) -> a frozen teacher.

``pretrained`` names a hub id or a directory, or one of the two real models that ship as packages
and work offline: ``"efficientnet-lite0"`` (vision) and ``"minilm"`` (text). ``tiny`` instead builds
a small randomly initialised model of the kind (tests, smoke runs)::

    teachers:
      clip: {kind: clip, pretrained: openai/clip-vit-base-patch16}
      vision: {kind: vision, pretrained: efficientnet-lite0, image_size: 224}
      text: {kind: text, pretrained: minilm}
      vilt: {kind: fusion, pretrained: dandelin/vilt-b32-finetuned-vqa}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerBase, ViltConfig, ViTConfig

from vldistill.data.examples import TASK_KINDS
from vldistill.errors import ConfigError
from vldistill.models.loading import resolve_pretrained
from vldistill.models.processing import DEFAULT_MEAN, DEFAULT_STD, Processor
from vldistill.models.teachers.base import Teacher
from vldistill.models.teachers.clip import CLIPTeacher, small_clip_config
from vldistill.models.teachers.fusion import FusionTeacher
from vldistill.models.teachers.text import MINILM, TEXT_TEACHER_IMAGE_SIZE, TextTeacher, minilm_tokenizer
from vldistill.models.teachers.vision import EFFICIENTNET_LITE0, VisionTeacher

TeacherKind = Literal["clip", "vision", "text", "fusion"]
_PACKAGED = {EFFICIENTNET_LITE0: "vision", MINILM: "text"}


class TinyTeacherConfig(BaseModel):
    """A small random model (both towers / the encoder share these sizes)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    hidden_size: int = Field(32, ge=1)
    """The width."""
    num_layers: int = Field(2, ge=1)
    """Transformer layers (per tower)."""
    num_heads: int = Field(2, ge=1)
    """Attention heads."""
    intermediate_size: int = Field(64, ge=1)
    """The feed-forward width."""
    patch_size: int = Field(8, ge=1)
    """The patch size in pixels."""
    projection_dim: int = Field(16, ge=1)
    """CLIP: the width of the joint image-text space."""
    num_labels: int = Field(3, ge=1)
    """``fusion``: the classes of its head."""
    tokenizer: str = MINILM
    """``"minilm"`` (the packaged MiniLM WordPiece tokenizer) or a hub id / folder."""


class TeacherConfig(BaseModel):
    """One teacher: ``kind`` and either ``pretrained`` or ``tiny``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: TeacherKind
    """``clip`` (image and text towers), ``vision`` (an image backbone), ``text`` (a text encoder) or
    ``fusion`` (a fine-tuned ViLT)."""
    pretrained: str | None = None
    """A hub id or folder, or a packaged model: ``"efficientnet-lite0"`` (vision) or ``"minilm"`` (text)."""
    tiny: TinyTeacherConfig | None = None
    """Build a small randomly initialised model instead of ``pretrained`` (tests, smoke runs)."""
    image_size: int | None = Field(None, ge=8)
    """Input size in pixels (default: the checkpoint's; 224 for EfficientNet; 32 for a tiny teacher)."""
    max_length: int = Field(40, ge=4)
    """Tokens per text, special tokens included."""

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if (self.pretrained is None) == (self.tiny is None):
            raise ValueError("give exactly one of 'pretrained' (hub id, directory, packaged name) and 'tiny'")
        packaged_kind = _PACKAGED.get(self.pretrained or "")
        if packaged_kind is not None and packaged_kind != self.kind:
            raise ValueError(f"'{self.pretrained}' is a {packaged_kind} model, not a {self.kind} teacher")
        return self


def _tokenizer(name: str, key: str) -> PreTrainedTokenizerBase:
    if name == MINILM:
        return minilm_tokenizer()
    name = resolve_pretrained(name, key)
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"tiny.tokenizer {name!r} cannot be loaded ({err}); fix: use 'minilm' or a local directory"
        ) from err


def _tiny_teacher(cfg: TeacherConfig, task: str | None, key: str) -> Teacher:
    tiny = cfg.tiny
    assert tiny is not None
    size = cfg.image_size or 32
    tokenizer = _tokenizer(tiny.tokenizer, f"{key}.tiny.tokenizer")
    processor = Processor(tokenizer, size, DEFAULT_MEAN, DEFAULT_STD, max_length=cfg.max_length)
    bert_like = dict(
        hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        intermediate_size=tiny.intermediate_size,
    )
    if cfg.kind == "clip":
        config = small_clip_config(
            tokenizer,
            image_size=size,
            patch_size=tiny.patch_size,
            hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size,
            projection_dim=tiny.projection_dim,
            max_length=cfg.max_length,
        )
        return CLIPTeacher.from_config(config, processor)
    if cfg.kind == "vision":
        config = ViTConfig(image_size=size, patch_size=tiny.patch_size, **bert_like)
        return VisionTeacher.from_config(config, processor)
    if cfg.kind == "text":
        text_size = cfg.image_size or TEXT_TEACHER_IMAGE_SIZE
        text_processor = Processor(tokenizer, text_size, DEFAULT_MEAN, DEFAULT_STD, max_length=cfg.max_length)
        config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=cfg.max_length, **bert_like)
        return TextTeacher.from_config(config, text_processor)
    task = _fusion_task(task)
    config = ViltConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=cfg.max_length,
        image_size=size,
        patch_size=tiny.patch_size,
        **bert_like,
    )
    answers = [f"answer {i}" for i in range(tiny.num_labels)] if task == "vqa" else None
    num_labels = {"vqa": tiny.num_labels, "snli_ve": 3, "vcr": 1, "nlvr2": 2}[task]
    return FusionTeacher.from_config(config, task, num_labels, processor, answers=answers)


def _fusion_task(task: str | None) -> str:
    if task not in TASK_KINDS:
        raise ConfigError(f"a fusion teacher needs the task (got {task!r}); fix: use one of {sorted(TASK_KINDS)}")
    return task


def build_teacher(cfg: TeacherConfig, *, task: str | None = None, key: str = "teacher") -> Teacher:
    """The frozen teacher ``cfg`` describes; ``task`` (the data's) picks a fusion teacher's head.

    ``key`` is where ``cfg`` sits in the config (e.g. ``method.teachers.clip``): errors about
    ``pretrained`` name ``<key>.pretrained`` (``<key>.tiny.tokenizer`` for a tiny teacher's tokenizer).

    Raises:
        ConfigError: a ``pretrained`` folder or hub id that cannot be found or reached (fast, one line:
            ``resolve_pretrained``), or a checkpoint that does not fit the kind.
    """
    if cfg.tiny is not None:
        return _tiny_teacher(cfg, task, key)
    assert cfg.pretrained is not None
    name = cfg.pretrained if cfg.pretrained in _PACKAGED else resolve_pretrained(cfg.pretrained, f"{key}.pretrained")
    kwargs = dict(image_size=cfg.image_size, max_length=cfg.max_length)
    if cfg.kind == "clip":
        return CLIPTeacher.from_pretrained(name, **kwargs)
    if cfg.kind == "vision":
        return VisionTeacher.from_pretrained(name, **kwargs)
    if cfg.kind == "text":
        return TextTeacher.from_pretrained(name, **kwargs)
    return FusionTeacher.from_pretrained(name, task=_fusion_task(task), **kwargs)
