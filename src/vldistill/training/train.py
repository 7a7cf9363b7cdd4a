"""The training loop on accelerate: build -> loop -> evaluate -> checkpoint; resumable.

``train(cfg, out_dir)`` is what ``vldistill train`` and the protocol call. The same code runs on one
CPU, one GPU, or many processes under ``accelerate launch`` / ``torchrun`` (DDP; FSDP2 on GPUs through
accelerate's own config, ``configs/accelerate/fsdp.yaml``: :mod:`vldistill.training.sharding`). The
global batch is ``train.batch_size`` whatever the number of processes (accelerate splits each batch),
so a run matches itself across process counts; with ``train.grad_accum`` a step takes the update of a
batch ``grad_accum`` times larger, the epoch's last, shorter window included
(:class:`~vldistill.training.engine.AccumulationPlan`).

The run folder (``config.yaml``, checkpoints, ``metrics.jsonl``, TensorBoard, the rules for reusing
a folder, Ctrl-C and SIGTERM) is :mod:`vldistill.training.run_folder`; which weights the run keeps (the best on
the dev set) is :mod:`vldistill.training.model_selection`. The dev set is used for that choice only: the
evaluation splits are evaluated once, at the end, with the selected weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn
from transformers import get_linear_schedule_with_warmup

from vldistill.config import ExperimentConfig
from vldistill.data.loader import Batch, CachingProcessor, ExampleDataset, ImageStore, collate_fn
from vldistill.models.heads import task_loss
from vldistill.models.students import save_student
from vldistill.training.cache import open_teacher_cache
from vldistill.training.engine import (
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
from vldistill.training.evaluate import PRIMARY_METRIC, Evaluator
from vldistill.training.experiment import Built, EvalSet, build_models, load_data
from vldistill.training.interrupt import ignore_stop_signals
from vldistill.training.model_card import write_run_card
from vldistill.training.model_selection import ModelSelection
from vldistill.training.progress import TrainProgress
from vldistill.training.run_folder import Position, RunFolder
from vldistill.training.sharding import MainStudent

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
        "train.log_with",
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


def dev_evaluation(accelerator: Any, evaluate: Evaluator, student: nn.Module, dev: EvalSet) -> dict[str, float]:
    """The dev set's scores, computed by the main process and shared with all (they select and stop together)."""
    scores: dict[str, float] = {}
    if accelerator.is_main_process:
        scores = evaluate.split(student, dev)[0]
        for timing in ("ms_per_example", "deploy_ms_per_example"):
            scores.pop(timing)  # the selection's record must not depend on the machine's load
    return broadcast_object_list([scores])[0]


def select_on_dev(
    selection: ModelSelection, accelerator: Any, evaluate: Evaluator, student: nn.Module, dev: EvalSet, pos: Position
) -> tuple[dict[str, float], bool]:
    """Evaluate ``student`` on the dev set after step ``pos.step`` and let ``selection`` keep or pass it."""
    scores = dev_evaluation(accelerator, evaluate, student, dev)
    improved = selection.update(pos.step, scores[PRIMARY_METRIC[evaluate.task]], student)
    return scores, improved


def train(
    cfg: ExperimentConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Fine-tune the student with the configured method; returns the final evaluation.

    Writes ``out_dir/config.yaml``, ``metrics.jsonl`` (a row every ``train.log_every`` steps, one per
    dev evaluation and one per epoch), ``tensorboard/`` (the trackers of ``train.log_with``),
    ``checkpoints/``, ``final/`` (the selected student, a Hugging Face directory, with its model card
    ``README.md``: :mod:`vldistill.training.model_card`, which records ``command``, by default this
    process's command line) and ``summary.json``::

        {"task", "method", "student", "train_examples", "processes", "steps", "primary_metric", "seconds",
         "eval": {split: {metric: value}},   # "eval", "shifted", "eval:shuffled", "shifted:shuffled"
         "dev": {metric: value},            # the selected weights' dev scores (only with a dev set)
         "best_step": int,                  # the step of the selected weights
         "dev_evaluations": int}

    Each split's metrics are :func:`vldistill.training.evaluate.score`'s (primary metric, breakdowns) plus
    ``ms_per_example``; ``<split>:shuffled`` is the image-shuffle control of ``<split>``.

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
    accelerator = make_accelerator(tc.mixed_precision, out_dir, tc.log_with, fsdp=True)
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
    answers = data.builder.answers or None
    store = ImageStore()
    processor = CachingProcessor(built.processor)  # each image resized and each text tokenized once per run
    dataset = ExampleDataset(data.train, store)
    sampler = EpochSampler(len(dataset), tc.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=tc.batch_size,
        sampler=sampler,
        collate_fn=collate_fn(processor, data.task, answers),
        num_workers=tc.num_workers,
        worker_init_fn=ignore_stop_signals if tc.num_workers else None,
        generator=torch.Generator(),  # see engine.EpochSampler: iterating must not draw from the global stream
    )

    device = accelerator.device
    evaluate = Evaluator(data.task, processor, answers, tc.eval_batch_size, device, store)
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
    last_step = tc.max_steps or plan.steps_per_epoch * tc.epochs  # max_steps: a budget, as many epochs as it takes
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * last_step), last_step)
    selection = ModelSelection(
        built.student, eval_every=tc.eval_every, patience=tc.early_stopping, has_dev=data.dev is not None
    )
    # What the main process evaluates, selects and saves: the student itself, or under FSDP (which
    # shards it in prepare) an unsharded replica that every process refreshes together: main_student(model).
    main_student = MainStudent(accelerator, built.student, prefix="student.")
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    switches = {f"switches.{k}": v for k, v in built.method.describe().items()}  # as the method applies them
    pos = run.restore(
        {"model": accelerator.unwrap_model(model), "selection": selection}, optimizer, scheduler, switches
    )
    metric = PRIMARY_METRIC[data.task]

    progress = TrainProgress(enabled=show_progress and main, total=last_step, completed=pos.step, epoch=pos.epoch)
    with progress, run:
        while pos.step < last_step and not selection.stopped:
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
                if data.dev is not None and selection.due(pos.step, last_step):
                    student = main_student(model)
                    dev, best = select_on_dev(selection, accelerator, evaluate, student, data.dev, pos)
                    row = {"kind": "dev", "step": pos.step, "epoch": pos.epoch + 1, "dev": dev, "best": best}
                    run.log_row(pos.step, row, {f"dev/{m}": v for m, v in dev.items()})
                    progress.note(f"step {pos.step}: dev {metric} {dev[metric]}" + (" (best)" if best else ""))
                run.after_step(pos, lr=lr, loss=step_loss, grad_norm=grad_norm, terms=window)
                window = {}
                if pos.step >= last_step or selection.stopped:
                    break
            pos.epoch, pos.batch = pos.epoch + 1, 0
            evaluation: dict[str, dict[str, float]] = {}
            if tc.eval_each_epoch and data.dev is None and pos.step < last_step:
                student = main_student(model)  # every process (a collective under FSDP); the main one evaluates
                if main:
                    evaluation = evaluate(student, data.evals, controls=False)
                    progress.note(
                        f"epoch {pos.epoch}: " + ", ".join(f"{s} {metric} {ms[metric]}" for s, ms in evaluation.items())
                    )
            row = {
                "epoch": pos.epoch,
                "step": pos.step,
                **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
                "eval": evaluation,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            run.end_epoch(pos, row, {f"{s}/{m}": v for s, ms in evaluation.items() for m, v in ms.items()})
        student = main_student(model)  # a collective under FSDP: before leaving `run` ends the process group
    summary: dict[str, Any] = {}
    if main:
        selection.restore_best(student)
        summary = {
            "task": data.task,
            "method": cfg.method.name,
            "student": cfg.student.kind,
            "train_examples": len(data.train),
            "processes": accelerator.num_processes,
            "steps": pos.step,
            "eval": evaluate(student, data.evals),
            "primary_metric": metric,
            "best_step": int(selection.best_step) if int(selection.evaluations) else pos.step,
            "dev_evaluations": int(selection.evaluations),
        }
        if data.dev is not None:
            summary["dev"] = next(r["dev"] for r in reversed(run.rows("dev")) if r["step"] == summary["best_step"])
        save_student(student, out_dir / "final", built.processor)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        write_run_card(out_dir, cfg, summary, built.method, student, command)
    return summary
