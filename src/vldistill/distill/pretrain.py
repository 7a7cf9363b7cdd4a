"""DiDE's pre-training-stage distillation: a dual encoder learns a fusion teacher on image-caption pairs.

DiDE (arXiv 2112.08723) reports that cross-modal attention distillation applied "for both pre-training
and fine-tuning stages achieves further improvements", but released only the fine-tuning stage.
:func:`pretrain_dual` is our reading of the pre-training stage; the result is a dual student that a
fine-tuning config starts from (``student: {kind: dual, pretrained: <out>/final}``), which keeps the
towers and the fusion MLP and gives the task a new head.

Our choices (the paper is silent on them):

- **Data**: image-caption pairs as JSON lines (:mod:`vldistill.distill.pretrain_data`): the generated
  world's captions, or real ones (COCO, CC) converted.
- **Views**: each batch of ``B`` pairs gives every image its own caption and ``negatives`` captions
  of *other images* of the batch (the next ones in batch order whose image differs: a shifted roll
  that skips captions of the same image, as COCO has five per image), so ``B * (1 + negatives)``
  (image, text) views, laid out as the ``vcr`` task so that teacher and student score them with
  their ``vcr`` rank heads, one logit per view.
- **Teacher**: a frozen fusion encoder with an image-text matching head,
  ``ViltForImageAndTextRetrieval`` (``dandelin/vilt-b32-finetuned-coco`` in real use), eager attention;
  its last-layer joint attention gives the cross blocks (``cross_attention_from_joint``).
- **Student**: ``DualEncoderStudent`` with the ``vcr`` head (a linear score on the fused vector).
- **Loss**: ``attention_weight * (KL_t2i + KL_i2t)`` on all views (``attention_kl``: padded queries and
  keys masked) ``+ itm_weight * ITM soft labels``. ``itm_loss: softmax`` (default) is the KL of the
  teacher's and the student's softmax over each image's candidate captions: ViLT's retrieval head is
  trained with a softmax over candidates, so its scores are only meaningful relative to each other;
  ``sigmoid`` is the BCE of each student logit against ``sigmoid(teacher logit / T)``, for teachers
  whose matching score is a calibrated probability.

Training is AdamW with linear warm-up and decay on accelerate (``vldistill.train``'s optimizer and
sampler), deterministic on CPU for a seed; no checkpoints or resume: pre-training runs are short and
the final student is written atomically (a temporary folder renamed into place).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import AutoConfig, get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

from vldistill.config import _format_validation, _set_path
from vldistill.distill.losses import attention_kl, logit_kd
from vldistill.distill.pretrain_data import ITM_TASK, CaptionDataConfig, PairBatch, PairCollator, caption_pairs
from vldistill.errors import ConfigError
from vldistill.models.fusion import FusionStudent
from vldistill.models.outputs import FusionTeacherOutput, StudentOutput
from vldistill.models.processing import Processor
from vldistill.models.students import STUDENT_FILE, StudentConfig, build_student, save_student
from vldistill.models.teachers.factory import TeacherConfig, build_teacher
from vldistill.models.teachers.fusion import FusionTeacher
from vldistill.progress import TrainProgress

RETRIEVAL_CLASS = "ViltForImageAndTextRetrieval"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainLossConfig(_Strict):
    """Loss weights; ``negatives``: mismatched captions per image (views per image = 1 + negatives)."""

    attention_weight: float = Field(1.0, ge=0)
    itm_weight: float = Field(1.0, ge=0)
    itm_loss: Literal["softmax", "sigmoid"] = "softmax"
    temperature: float = Field(1.0, gt=0)
    negatives: int = Field(1, ge=1)


class PretrainTrainConfig(_Strict):
    """Optimisation (the fields mean what they mean in ``train:`` of an experiment)."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)


class DidePretrainConfig(_Strict):
    """One pre-training run: ``vldistill pretrain CONFIG`` (see ``configs/dide-pretrain-demo.yaml``)."""

    name: str = "dide-pretrain"
    data: CaptionDataConfig = Field(default_factory=CaptionDataConfig)
    student: StudentConfig = Field(default_factory=lambda: StudentConfig(kind="dual"))
    teacher: TeacherConfig
    loss: PretrainLossConfig = Field(default_factory=PretrainLossConfig)
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig)

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


# ------------------------------------------------------------------------------------ models, loss


def load_itm_teacher(cfg: TeacherConfig) -> FusionTeacher:
    """A frozen fusion teacher with a retrieval (image-text matching) head.

    A hub ViLT retrieval checkpoint (``dandelin/vilt-b32-finetuned-coco``) may carry a ``num_labels``
    its one-logit rank head does not use, so it is loaded here rather than through
    ``FusionTeacher.from_pretrained`` (which checks ``num_labels`` against the task); a directory that
    vldistill saved goes through that loader.
    """
    if cfg.tiny is not None or (cfg.pretrained and (Path(cfg.pretrained) / STUDENT_FILE).is_file()):
        return build_teacher(cfg, task=ITM_TASK)
    name = str(cfg.pretrained)
    if not Path(name).exists() and name.count("/") != 1:  # hub ids are "owner/name"
        raise ConfigError(
            f"teacher.pretrained '{name}' is neither a folder nor a hub id; fix: train the teacher "
            "first (see the config's comments) or give a ViLT retrieval checkpoint"
        )
    try:
        architectures = AutoConfig.from_pretrained(name).architectures or []
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"teacher {name!r}: cannot load a model config ({err}); fix: give a ViLT retrieval "
            "directory or a hub id available offline"
        ) from err
    if RETRIEVAL_CLASS not in architectures:
        raise ConfigError(
            f"teacher {name!r} holds {architectures}, not {RETRIEVAL_CLASS}; fix: give a ViLT "
            "with an image-text matching head, e.g. dandelin/vilt-b32-finetuned-coco"
        )
    student = FusionStudent.from_pretrained(name, ITM_TASK, 1)
    processor = Processor.from_pretrained(name, image_size=cfg.image_size, max_length=cfg.max_length)
    return FusionTeacher(student, processor)


def check_alignment(batch: PairBatch, out: StudentOutput, teacher: FusionTeacherOutput) -> None:
    """Raise ``ConfigError`` unless the two attention maps line up position by position.

    Both must see the same tokens (same tokenizer), the same number of image patches and of heads.
    """
    s, t = out.cross_attention, teacher.cross_attention
    assert s is not None
    (sh, sp), (th, tp) = s.text_to_image.shape[1::2], t.text_to_image.shape[1::2]
    if (sh, sp) != (th, tp):
        raise ConfigError(
            f"student last layer has {sh} heads x {sp} image tokens, teacher {th} x {tp}; fix: give "
            "the student's towers the teacher's number of heads, image size and patch size"
        )
    n = min(batch.student.input_ids.shape[1], batch.teacher.input_ids.shape[1])
    real = batch.student.attention_mask[:, :n].bool() & batch.teacher.attention_mask[:, :n].bool()
    if not torch.equal(batch.student.input_ids[:, :n][real], batch.teacher.input_ids[:, :n][real]):
        raise ConfigError(
            "student and teacher tokenize captions differently, so their attention maps do not line "
            "up; fix: give the student's text tower the teacher's tokenizer (ViLT: BERT uncased)"
        )


def _fit(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``x`` cut or zero-padded along ``dim`` to ``size`` (teacher text length -> the student's)."""
    if x.shape[dim] >= size:
        return x.narrow(dim, 0, size)
    shape = list(x.shape)
    shape[dim] = size - x.shape[dim]
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def pretrain_losses(
    out: StudentOutput, teacher: FusionTeacherOutput, cfg: PretrainLossConfig
) -> dict[str, torch.Tensor]:
    """The weighted terms ``attention/t2i``, ``attention/i2t`` and ``itm`` (scalars).

    ``out.logits`` and ``teacher.logits`` are ``(B, 1 + n)`` rank scores of each image's captions;
    ``out.cross_attention`` and ``teacher.cross_attention`` hold ``(B * (1 + n), H, L, P)`` and
    ``(B * (1 + n), H, P, L)`` maps (the teacher's text length is fitted to the student's).
    """
    s, t = out.cross_attention, teacher.cross_attention
    assert s is not None
    length = s.text_to_image.shape[2]
    text_mask = s.text_mask & _fit(t.text_mask, 1, length)
    image_mask = s.image_mask & t.image_mask
    t2i = _fit(t.text_to_image, 2, length).to(s.text_to_image.dtype)
    i2t = _fit(t.image_to_text, 3, length).to(s.image_to_text.dtype)
    w = cfg.attention_weight
    return {
        "attention/t2i": w * attention_kl(t2i, s.text_to_image, text_mask, image_mask),
        "attention/i2t": w * attention_kl(i2t, s.image_to_text, image_mask, text_mask),
        "itm": cfg.itm_weight * logit_kd(out.logits, teacher.logits, kind=cfg.itm_loss, temperature=cfg.temperature),
    }


# ------------------------------------------------------------------------------------------ loop


def _save_atomically(student: torch.nn.Module, target: Path, processor: Processor) -> None:
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    save_student(student, partial, processor)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)


def pretrain_dual(cfg: DidePretrainConfig, out_dir: Path, *, show_progress: bool = True) -> dict[str, Any]:
    """Distil the teacher into a dual student on caption pairs; write ``out_dir/final`` and return the summary.

    Writes ``out_dir/metrics.jsonl`` (per epoch: mean loss terms, and how often teacher and student rank
    each image's own caption first, ``*_rank_top1``, and agree, ``rank_agreement``),
    ``out_dir/summary.json`` and ``out_dir/final/`` (``save_student``: loads with
    ``StudentConfig(kind="dual", pretrained=...)`` for any task).
    """
    from vldistill.experiment import student_processor
    from vldistill.train import EpochSampler, NumericsError, build_optimizer

    t0 = time.perf_counter()
    hf_logging.disable_progress_bar()
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # several CPU processes run as DDP over gloo (see vldistill.train)
        mixed_precision=tc.mixed_precision if torch.cuda.is_available() else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(tc.seed)
    teacher = load_itm_teacher(cfg.teacher)
    student = build_student(cfg.student, ITM_TASK, 1)
    pairs = caption_pairs(cfg.data, tc.seed)
    if len(pairs) < 2:
        raise ConfigError(f"data: {len(pairs)} caption pair(s); fix: give at least 2 (a negative needs another image)")
    processor = student_processor(cfg.student)
    sampler = EpochSampler(len(pairs), tc.seed)
    # drop_last: every batch must hold other images' captions to serve as negatives.
    loader = torch.utils.data.DataLoader(
        pairs,
        batch_size=min(tc.batch_size, len(pairs)),
        sampler=sampler,
        drop_last=True,
        collate_fn=PairCollator(processor, teacher.processor, cfg.loss.negatives),
        num_workers=tc.num_workers,
    )
    total_steps = len(loader) * tc.epochs
    total_steps = min(total_steps, tc.max_steps) if tc.max_steps else total_steps
    optimizer = build_optimizer(student, tc)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(student.train(), optimizer, loader, scheduler)
    device = accelerator.device
    teacher.to(device)

    step, aligned, rows = 0, False, []
    with TrainProgress(enabled=show_progress and accelerator.is_main_process, total=total_steps) as progress:
        for epoch in range(tc.epochs):
            sampler.use_epoch(epoch)
            sums: dict[str, float] = {}
            seen = 0
            for batch in loader:
                batch = batch.to(device)
                with accelerator.autocast():
                    target = teacher(batch.teacher)
                    out = model(batch.student, output_cross_attention=True)
                    if not aligned:
                        check_alignment(batch, out, target)
                        aligned = True
                    terms = pretrain_losses(out, target, cfg.loss)
                    loss = sum(terms.values())
                if not torch.isfinite(loss):
                    bad = ", ".join(k for k, v in terms.items() if not torch.isfinite(v))
                    raise NumericsError(f"step {step + 1}: loss term(s) {bad} not finite; fix: lower train.lr")
                accelerator.backward(loss)
                if tc.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                seen += 1
                teacher_top, student_top = target.logits.argmax(1), out.logits.detach().argmax(1)
                stats = {
                    **{k: float(v.detach()) for k, v in terms.items()},
                    "loss": float(loss.detach()),
                    "teacher_rank_top1": float((teacher_top == 0).float().mean()),
                    "student_rank_top1": float((student_top == 0).float().mean()),
                    "rank_agreement": float((teacher_top == student_top).float().mean()),
                }
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                progress.advance(stats["loss"], epoch)
                if step >= total_steps:
                    break
            rows.append(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    **{k: v / max(seen, 1) for k, v in sums.items()},
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
            if accelerator.is_main_process:
                with (out_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
            if step >= total_steps:
                break
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        _save_atomically(accelerator.unwrap_model(model), out_dir / "final", processor)
        summary = {
            "name": cfg.name,
            "pairs": len(pairs),
            "steps": step,
            "first_epoch": rows[0],
            "last_epoch": rows[-1],
            "final": str(out_dir / "final"),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    accelerator.wait_for_everyone()
    return summary
