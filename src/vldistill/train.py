"""The training loop on accelerate: build -> loop -> evaluate -> checkpoint; resumable.

``train(cfg, out_dir)`` is what ``vldistill train`` and the protocol call. The same code runs on one
CPU, one GPU, or many processes under ``accelerate launch`` / ``torchrun`` (DDP; FSDP or DeepSpeed
through accelerate's own config). The global batch is ``train.batch_size`` whatever the number of
processes (accelerate splits each batch), so a run matches itself across process counts; with
``train.grad_accum`` a step takes the update of a batch ``grad_accum`` times larger, the epoch's
last, shorter window included (:class:`~vldistill.engine.AccumulationPlan`).

The run folder (``config.yaml``, checkpoints, ``metrics.jsonl``, TensorBoard, the rules for reusing
a folder, Ctrl-C and SIGTERM) is :mod:`vldistill.run_folder`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn
from transformers import get_linear_schedule_with_warmup

from vldistill.cache import open_teacher_cache
from vldistill.config import ExperimentConfig
from vldistill.data.loader import Batch, ExampleDataset, ImageStore, collate_fn
from vldistill.engine import (
    AccumulationPlan,
    EpochSampler,
    NumericsError,
    backward,
    build_optimizer,
    declare_unused_parameters,
    finite_loss,
    make_accelerator,
    optimizer_step,
)
from vldistill.evaluate import PRIMARY_METRIC, predict, score
from vldistill.experiment import Built, DataBundle, build_models, load_data
from vldistill.interrupt import ignore_stop_signals
from vldistill.models.heads import task_loss
from vldistill.models.students import save_student
from vldistill.progress import TrainProgress
from vldistill.run_folder import RunFolder

__all__ = ["HARMLESS_CHANGES", "EpochSampler", "NumericsError", "build_optimizer", "train"]

# Config keys a resumed run may change: they do not touch the updates (logging, checkpointing,
# data workers, evaluation), so the resumed run still ends as an uninterrupted one would.
HARMLESS_CHANGES = frozenset(
    {
        "name",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.num_workers",
        "train.threads",
        "train.eval_batch_size",
        "train.eval_each_epoch",
        "cache.dir",
        "cache.shard_size",
    }
)


class DistillModel(nn.Module):
    """The student and the method's projections as one module, so DDP syncs both.

    ``forward`` returns the logits and the loss terms (``task`` plus the method's weighted terms).
    """

    def __init__(self, student: nn.Module, method: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.method = method

    def forward(
        self, batch: Batch, targets: dict[str, dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.student(batch.student, output_cross_attention=self.method.needs_cross_attention)
        terms = {"task": task_loss(batch.task, out.logits, batch.targets)}
        terms.update(self.method.losses(out, batch, targets))
        return out.logits, terms


def micro_step(
    model: nn.Module,
    batch: Batch,
    targets: dict[str, dict[str, torch.Tensor]],
    accelerator: Any,
    weight: float = 1.0,
    sync: bool = True,
) -> dict[str, torch.Tensor]:
    """Forward and backward of one micro-batch, its loss weighted by ``weight``; returns the loss terms.

    ``weight`` is the micro-batch's share of its step's examples (:class:`AccumulationPlan`); gradients
    are all-reduced across processes only when ``sync`` (the step's last micro-batch).

    Raises:
        NumericsError: the loss is NaN or infinite (names the terms), before any backward.
    """
    with accelerator.autocast():
        _, terms = model(batch, targets)
        backward(accelerator, model, finite_loss(terms), weight, sync)
    return terms


def batch_to_device(batch: Batch, device: torch.device) -> Batch:
    return Batch(batch.index, batch.examples, batch.images, batch.student.to(device), batch.targets.to(device))


def teacher_targets_for_batch(
    built: Built, batch: Batch, cache: Any, device: torch.device
) -> dict[str, dict[str, torch.Tensor]]:
    if not built.method.teachers:
        return {}
    if cache is not None:
        return cache.lookup(batch.examples, device)
    return {n: {k: v.to(device) for k, v in t.items()} for n, t in built.method.targets(batch).items()}


def evaluate_all(
    student: nn.Module, data: DataBundle, processor: Any, batch_size: int, store: ImageStore, device: torch.device
) -> dict[str, dict[str, float]]:
    """Official metrics of ``student`` on every evaluation set."""
    results = {}
    collate = collate_fn(processor, data.task, data.builder.answers or None)
    for name, es in data.evals.items():
        # Its own generator: evaluating must not draw from the training run's random stream.
        loader = torch.utils.data.DataLoader(
            ExampleDataset(es.examples, store), batch_size=batch_size, collate_fn=collate, generator=torch.Generator()
        )
        start = time.perf_counter()
        preds = predict(student, loader, device)
        elapsed = time.perf_counter() - start
        results[name] = score(data.task, es.examples, es.records, preds, data.builder.answers or None)
        results[name]["ms_per_example"] = round(1000 * elapsed / max(len(es.examples), 1), 3)
    return results


def train(
    cfg: ExperimentConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the student with the configured method; returns the final evaluation.

    Writes ``out_dir/config.yaml``, ``metrics.jsonl`` (a row every ``train.log_every`` steps and one
    per epoch), ``tensorboard/``, ``checkpoints/``, ``final/`` (the student, a Hugging Face
    directory) and ``summary.json``.

    Raises:
        ConfigError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set, or a
            resume changes a config key outside ``HARMLESS_CHANGES``.
        NumericsError: a loss term became NaN or infinite.
        Interrupted: SIGINT or SIGTERM; a checkpoint of the step was saved first.
    """
    t0 = time.perf_counter()
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    accelerator = make_accelerator(tc.mixed_precision, out_dir)
    main = accelerator.is_main_process
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
    data = load_data(cfg.data, out_dir if main else None, verbose=main)
    built = build_models(cfg, data)
    store = ImageStore()
    dataset = ExampleDataset(data.train, store)
    sampler = EpochSampler(len(dataset), tc.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=tc.batch_size,
        sampler=sampler,
        collate_fn=collate_fn(built.processor, data.task, data.builder.answers or None),
        num_workers=tc.num_workers,
        worker_init_fn=ignore_stop_signals if tc.num_workers else None,
        generator=torch.Generator(),  # see engine.EpochSampler: iterating must not draw from the global stream
    )

    device = accelerator.device
    built.student.to(device)
    for teacher in built.method.teachers.values():
        teacher.to(device)
    teacher_cache = None
    if cfg.cache.enabled and built.method.teachers:
        teacher_cache = open_teacher_cache(
            cfg,
            data,
            built.method,
            rank=accelerator.process_index,
            world=accelerator.num_processes,
            barrier=accelerator.wait_for_everyone,
            store=store,
        )
    # One batch fixes the projections' widths (student width -> each teacher's width).
    first = batch_to_device(next(iter(loader)), device)
    first_targets = teacher_targets_for_batch(built, first, teacher_cache, device)
    with torch.no_grad():
        sample_out = built.student(first.student, output_cross_attention=built.method.needs_cross_attention)
    built.method.setup(sample_out, first_targets)
    # Statistics over the training set (target_norm: standardize), from the cache or live teachers.
    built.method.prepare(data.train, teacher_cache, store=store, batch_size=tc.batch_size)
    built.method.to(device)
    model = DistillModel(built.student, built.method)
    declare_unused_parameters(accelerator, model, lambda: sum(model(first, first_targets)[1].values()))
    set_seed(tc.seed)  # the setup batch must not change the training run's random stream

    optimizer = build_optimizer(model, tc)
    plan = AccumulationPlan(len(dataset), tc.batch_size, tc.grad_accum)
    total_steps = tc.max_steps or plan.steps_per_epoch * tc.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    pos = run.restore({"model": accelerator.unwrap_model(model)}, optimizer, scheduler)

    progress = TrainProgress(enabled=show_progress and main, total=total_steps, completed=pos.step, epoch=pos.epoch)
    final_eval: dict[str, dict[str, float]] = {}
    with progress, run:
        while pos.step < total_steps and pos.epoch < tc.epochs:
            sampler.use_epoch(pos.epoch)
            epoch_loader = accelerator.skip_first_batches(loader, pos.batch) if pos.batch else loader
            sums: dict[str, float] = {}  # the epoch's per-batch means, summed
            window: dict[str, float] = {}  # the step's terms, weighted as in its gradient
            seen = 0
            for batch in epoch_loader:
                batch = batch_to_device(batch, device)
                weight, steps = plan.at(pos.batch)
                targets = teacher_targets_for_batch(built, batch, teacher_cache, device)
                try:
                    terms = micro_step(model, batch, targets, accelerator, weight, sync=steps)
                except NumericsError as err:
                    raise run.non_finite(pos, err) from None
                pos.batch += 1
                seen += 1
                for k, v in terms.items():
                    value = float(v.detach())
                    sums[k] = sums.get(k, 0.0) + value
                    window[k] = window.get(k, 0.0) + weight * value
                if not steps:
                    continue
                lr, grad_norm = optimizer_step(accelerator, model, optimizer, scheduler, tc.max_grad_norm)
                pos.step += 1
                step_loss = sum(window.values())
                progress.advance(step_loss, pos.epoch)
                run.after_step(pos, lr=lr, loss=step_loss, grad_norm=grad_norm, terms=window)
                window = {}
                if pos.step >= total_steps:
                    break
            pos.epoch, pos.batch = pos.epoch + 1, 0
            evaluation: dict[str, dict[str, float]] = {}
            if main and (tc.eval_each_epoch or pos.step >= total_steps or pos.epoch >= tc.epochs):
                student = accelerator.unwrap_model(model).student
                evaluation = evaluate_all(student, data, built.processor, tc.eval_batch_size, store, device)
                metric = PRIMARY_METRIC[data.task]
                scores = ", ".join(f"{s} {metric} {ms[metric]}" for s, ms in evaluation.items())
                progress.note(f"epoch {pos.epoch}: {scores}")
            row = {
                "epoch": pos.epoch,
                "step": pos.step,
                **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
                "eval": evaluation,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            run.end_epoch(pos, row, {f"{s}/{m}": v for s, ms in evaluation.items() for m, v in ms.items()})
            final_eval = evaluation
    summary: dict[str, Any] = {}
    if main:
        student = accelerator.unwrap_model(model).student
        if not final_eval:
            final_eval = evaluate_all(student, data, built.processor, tc.eval_batch_size, store, device)
        save_student(student, out_dir / "final", built.processor)
        summary = {
            "task": data.task,
            "method": cfg.method.name,
            "student": cfg.student.kind,
            "train_examples": len(data.train),
            "processes": accelerator.num_processes,
            "steps": pos.step,
            "eval": final_eval,
            "primary_metric": PRIMARY_METRIC[data.task],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
