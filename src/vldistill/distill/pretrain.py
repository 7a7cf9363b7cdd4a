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

Training runs on the fine-tuning engine (:mod:`vldistill.training.engine`, :mod:`vldistill.training.run_folder`):
AdamW with linear warm-up and decay on accelerate, deterministic on CPU for a seed, with the same run
folder as ``vldistill train`` (``config.yaml``, checkpoints, ``--resume`` to the same weights bit for
bit, ``--overwrite``, ``metrics.jsonl`` and TensorBoard rows every ``train.log_every`` steps, Ctrl-C /
SIGTERM saving a checkpoint); the final student is written atomically (a temporary folder renamed
into place).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from transformers import AutoConfig, get_linear_schedule_with_warmup

from vldistill.distill.losses import attention_kl, logit_kd
from vldistill.distill.pretrain_config import (
    HARMLESS_CHANGES,
    DidePretrainConfig,
    PretrainLossConfig,
    PretrainTrainConfig,
    load_pretrain_config,
)
from vldistill.distill.pretrain_data import ITM_TASK, PairBatch, PairCollator, caption_pairs
from vldistill.errors import ConfigError
from vldistill.models.fusion import FusionStudent
from vldistill.models.loading import resolve_pretrained
from vldistill.models.outputs import FusionTeacherOutput, StudentOutput
from vldistill.models.processing import Processor
from vldistill.models.students import STUDENT_FILE, build_student, save_student
from vldistill.models.teachers.factory import TeacherConfig, build_teacher
from vldistill.models.teachers.fusion import FusionTeacher
from vldistill.training.engine import (
    EpochSampler,
    NumericsError,
    backward,
    build_optimizer,
    declare_unused_parameters,
    finite_loss,
    make_accelerator,
    optimizer_step,
)
from vldistill.training.interrupt import ignore_stop_signals
from vldistill.training.progress import TrainProgress
from vldistill.training.run_folder import RunFolder

RETRIEVAL_CLASS = "ViltForImageAndTextRetrieval"
__all__ = [
    "HARMLESS_CHANGES",
    "DidePretrainConfig",
    "PretrainLossConfig",
    "PretrainTrainConfig",
    "check_alignment",
    "load_itm_teacher",
    "load_pretrain_config",
    "pretrain_dual",
    "pretrain_losses",
]


# ------------------------------------------------------------------------------------ models, loss


def load_itm_teacher(cfg: TeacherConfig, key: str = "teacher") -> FusionTeacher:
    """A frozen fusion teacher with a retrieval (image-text matching) head; ``key``: its place in the config.

    A hub ViLT retrieval checkpoint (``dandelin/vilt-b32-finetuned-coco``) may carry a ``num_labels``
    its one-logit rank head does not use, so it is loaded here rather than through
    ``FusionTeacher.from_pretrained`` (which checks ``num_labels`` against the task); a directory that
    vldistill saved goes through that loader.

    Raises:
        ConfigError: ``<key>.pretrained`` is not a folder, nor a hub id that is cached or reachable
            (``resolve_pretrained``: one line, no retries); it holds no retrieval head, or lacks weights.
    """
    if cfg.tiny is not None:
        return build_teacher(cfg, task=ITM_TASK, key=key)
    assert cfg.pretrained is not None
    where = f"{key}.pretrained"
    name = resolve_pretrained(cfg.pretrained, where)
    if (Path(name) / STUDENT_FILE).is_file():
        return build_teacher(cfg, task=ITM_TASK, key=key)
    try:
        architectures = AutoConfig.from_pretrained(name).architectures or []
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{where} '{name}': cannot load a model config ({err}); fix: give a ViLT retrieval checkpoint "
            "(a folder written by save_pretrained, or a hub id)"
        ) from err
    if RETRIEVAL_CLASS not in architectures:
        raise ConfigError(
            f"{where} '{name}' holds {architectures}, not {RETRIEVAL_CLASS}; fix: give a ViLT "
            "with an image-text matching head, e.g. dandelin/vilt-b32-finetuned-coco"
        )
    # a teacher's matching head must be trained: nothing may start anew
    student = FusionStudent.from_pretrained(name, ITM_TASK, 1, key=where, new_head_ok=False)
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


def pretrain_dual(
    cfg: DidePretrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Distil the teacher into a dual student on caption pairs; write ``out_dir/final`` and return the summary.

    Writes the run folder of ``vldistill train`` (:mod:`vldistill.training.run_folder`): ``config.yaml``,
    ``checkpoints/``, ``tensorboard/``, ``metrics.jsonl`` (step rows, and per epoch: mean loss terms,
    and how often teacher and student rank each image's own caption first, ``*_rank_top1``, and agree,
    ``rank_agreement``), ``summary.json`` and ``final/`` (``save_student``: loads with
    ``StudentConfig(kind="dual", pretrained=...)`` for any task).

    Raises:
        ConfigError: a bad folder reuse (see ``vldistill.training.train.train``), too few pairs, misaligned maps.
        NumericsError: a loss term became NaN or infinite.
        Interrupted: SIGINT or SIGTERM; a checkpoint of the step was saved first.
    """
    from vldistill.training.experiment import student_processor

    t0 = time.perf_counter()
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out_dir = Path(out_dir)
    accelerator = make_accelerator(tc.mixed_precision, out_dir, command="pretrain")  # FSDP refused
    run = RunFolder(
        accelerator,
        out_dir,
        cfg,
        resume=resume,
        overwrite=overwrite,
        harmless=HARMLESS_CHANGES,
        log_every=tc.log_every,
        checkpoint_every=tc.checkpoint_every,
        keep_checkpoints=tc.keep_checkpoints,
    )
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
        worker_init_fn=ignore_stop_signals if tc.num_workers else None,
        generator=torch.Generator(),  # see engine.EpochSampler: iterating must not draw from the global stream
    )
    total_steps = len(loader) * tc.epochs
    total_steps = min(total_steps, tc.max_steps) if tc.max_steps else total_steps
    device = accelerator.device
    teacher.to(device)
    student.to(device).train()
    first = next(iter(loader)).to(device)
    with torch.no_grad():
        check_alignment(first, student(first.student, output_cross_attention=True), teacher(first.teacher))

    def sample_loss() -> torch.Tensor:
        out = student(first.student, output_cross_attention=True)
        return sum(pretrain_losses(out, teacher(first.teacher), cfg.loss).values())  # type: ignore[return-value]

    declare_unused_parameters(accelerator, student, sample_loss)
    set_seed(tc.seed)  # the checks on the first batch must not change the run's random stream
    optimizer = build_optimizer(student, tc)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
    pos = run.restore({"model": accelerator.unwrap_model(model)}, optimizer, scheduler)

    progress = TrainProgress(
        enabled=show_progress and accelerator.is_main_process, total=total_steps, completed=pos.step, epoch=pos.epoch
    )
    with progress, run:
        while pos.step < total_steps and pos.epoch < tc.epochs:
            sampler.use_epoch(pos.epoch)
            epoch_loader = accelerator.skip_first_batches(loader, pos.batch) if pos.batch else loader
            sums: dict[str, float] = {}
            seen = 0
            for batch in epoch_loader:
                batch = batch.to(device)
                with accelerator.autocast():
                    target = teacher(batch.teacher)
                    out = model(batch.student, output_cross_attention=True)
                    terms = pretrain_losses(out, target, cfg.loss)
                    try:
                        loss = finite_loss(terms)
                    except NumericsError as err:
                        raise run.non_finite(pos, err) from None
                    backward(accelerator, model, loss, 1.0, sync=True)
                lr, grad_norm = optimizer_step(accelerator, model, optimizer, scheduler, tc.max_grad_norm)
                pos.batch, pos.step, seen = pos.batch + 1, pos.step + 1, seen + 1
                values = {k: float(v.detach()) for k, v in terms.items()}
                teacher_top, student_top = target.logits.argmax(1), out.logits.detach().argmax(1)
                stats = {
                    **values,
                    "loss": float(loss.detach()),
                    "teacher_rank_top1": float((teacher_top == 0).float().mean()),
                    "student_rank_top1": float((student_top == 0).float().mean()),
                    "rank_agreement": float((teacher_top == student_top).float().mean()),
                }
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                progress.advance(stats["loss"], pos.epoch)
                run.after_step(pos, lr=lr, loss=stats["loss"], grad_norm=grad_norm, terms=values)
                if pos.step >= total_steps:
                    break
            pos.epoch, pos.batch = pos.epoch + 1, 0
            means = {k: v / max(seen, 1) for k, v in sums.items()}
            row = {"epoch": pos.epoch, "step": pos.step, **means, "seconds": round(time.perf_counter() - t0, 2)}
            run.end_epoch(pos, row, {f"epoch/{k}": v for k, v in means.items()})
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        rows = run.epoch_rows()
        _save_atomically(accelerator.unwrap_model(model), out_dir / "final", processor)
        summary = {
            "name": cfg.name,
            "pairs": len(pairs),
            "steps": pos.step,
            "first_epoch": rows[0],
            "last_epoch": rows[-1],
            "final": str(out_dir / "final"),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    accelerator.wait_for_everyone()
    return summary
