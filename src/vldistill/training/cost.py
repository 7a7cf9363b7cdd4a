"""``vldistill plan --cost``: what a run costs on this machine, and whether to cache the teachers.

For the configured student, teachers and training split, :func:`make_cost_plan` reports

- the parameters and weight bytes of the student, its projections and each teacher;
- the time of a training step measured here: a few steps of the training loop's own step
  (:class:`~vldistill.training.timing.StepRunner`) with the teachers run live and with their targets
  read from a teacher cache built for the timed examples, the two interleaved, medians
  (:func:`~vldistill.training.timing.interleaved_times`, as ``bench/run.py`` times its cases);
- the peak memory of each (how it is measured: :class:`~vldistill.training.timing.PeakMemory`);
- the teacher cache's size on disk for the whole split (:func:`cache_size_bytes`) and the free disk;
- the time of the run each way, of building the cache, and which of the two to use (:func:`recommend`).

The split's size is the configured training split as read (after ``max_train``, the dev holdout and
the low-shot subset). When ``data.root`` is not there, the steps are timed on the generated world's
examples of the same task (each image resized to the models' sizes, as a real one would be), and the
split's size is the published size of the task's official training split
(:data:`vldistill.data.split_sizes.PUBLISHED_TRAIN_SPLITS`), so a real-size preset can be costed before
its data is downloaded.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from vldistill.config import DataConfig, ExperimentConfig, cache_dir
from vldistill.data.split_sizes import PUBLISHED_TRAIN_SPLITS, SplitSize, count_split
from vldistill.errors import ConfigError
from vldistill.training.cache import TeacherCache, open_teacher_cache
from vldistill.training.cache.size import projected_bytes
from vldistill.training.experiment import DataBundle, build_models, load_data
from vldistill.training.timing import PeakMemory, StepRunner, fixed_batches, interleaved_times, timing_accelerator

LIVE_OVER_CACHED = 1.2
"""A step with live teachers must take more than this times a cached step for the cache to be recommended:
below it the saving is within what a few timed steps can tell apart, and not worth the disk."""


def cache_size_bytes(cache: TeacherCache, split: SplitSize) -> tuple[float, int]:
    """``(bytes per example, bytes for the whole split)`` of the teacher cache on disk.

    ``cache`` holds the rows of some examples of the split (the plan builds one over the timed
    examples); each of its stores' bytes per row is projected to the split's distinct images, distinct
    texts and examples (:func:`vldistill.training.cache.size.projected_bytes`), so an image shared by
    several questions is counted once, as the cache stores it. Per example: the total over
    ``split.examples``.
    """
    total = projected_bytes(cache, split)
    return total / split.examples, total


def recommend(live_s: float, cached_s: float, cache_bytes: int, free_bytes: int, passes: float) -> tuple[str, str]:
    """``("cache" | "live", why)`` for a run with teachers.

    Rules, in order: the cache must fit the free disk of its folder; a step with live teachers must
    take more than :data:`LIVE_OVER_CACHED` times a cached one; and the run must pass over the split
    at least twice (``passes``: epochs, or ``max_steps`` in epochs), because building the cache runs
    every teacher once over the split, as one epoch with live teachers does. A cache that other runs
    of the same split reuse (seeds, low-shot subsets, a protocol) pays for itself sooner; the reason
    says so.

    >>> recommend(2.0, 1.0, 10, 100, 3)[0], recommend(1.1, 1.0, 10, 100, 3)[0], recommend(2.0, 1.0, 100, 10, 3)[0]
    ('cache', 'live', 'live')
    """
    ratio = live_s / cached_s
    size, free = human_bytes(cache_bytes), human_bytes(free_bytes)
    if cache_bytes > free_bytes:
        return "live", (
            f"the cache ({size}) does not fit the {free} free: train with live teachers "
            "(cache.enabled=false) or point cache.dir at a volume with room"
        )
    if ratio <= LIVE_OVER_CACHED:
        return "live", (
            f"a step with live teachers takes {ratio:.2f}x a cached one (<= {LIVE_OVER_CACHED}x): "
            f"the cache would save little for {size} of disk"
        )
    if passes < 2:
        return "live", (
            f"a step with live teachers takes {ratio:.2f}x a cached one, but the run passes over the split "
            f"{passes:.3g} time(s) and building the cache costs one pass of the teachers; cache it only if "
            "other runs (seeds, low-shot subsets) will reuse it"
        )
    return "cache", (
        f"a step with live teachers takes {ratio:.2f}x a cached one; the cache ({size}) fits the {free} free "
        f"and its build (one pass of the teachers) is repaid within the run's {passes:.3g} passes, sooner "
        "when other runs of the split reuse it"
    )


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: binary units, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    """``0.25 -> '250 ms'``, ``95 -> '1.58 min'``, ``7200 -> '2 h'``, ``9.5e6 -> '110 days'``."""
    if s < 1:
        return f"{s * 1000:.3g} ms"
    if s < 60:
        return f"{s:.3g} s"
    if s < 3600:
        return f"{s / 60:.3g} min"
    if s < 2 * 86400:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:,.0f} days" if s >= 1000 * 86400 else f"{s / 86400:.3g} days"


@dataclass
class CostPlan:
    """What :func:`make_cost_plan` measured; every size in bytes, every time in seconds.

    ``step_seconds`` / ``peak_memory``: per case, ``live`` and ``cache`` (``student`` alone for a
    method without teachers); ``peak_memory`` of a case is ``{"peak", "added"}``
    (:meth:`~vldistill.training.timing.PeakMemory.measure`). ``run_seconds``: ``live`` (the whole run
    with live teachers), ``cache`` (the run reading the cache) and ``cache_build`` (the teachers' one
    pass over the split, estimated as the live step's extra time per batch).
    """

    task: str
    device: str
    batch_size: int
    timed_steps: int
    timed_on: str
    split: SplitSize
    models: list[dict[str, Any]]
    step_seconds: dict[str, float]
    peak_memory: dict[str, dict[str, int | None]]
    memory_source: str
    batches_per_epoch: int
    passes: float
    run_seconds: dict[str, float]
    cache_bytes_per_example: float | None = None
    cache_bytes: int | None = None
    cache_dir: str = ""
    free_bytes: int = 0
    recommendation: str = "none"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_present(root: str) -> bool:
    return root == "world" or root.startswith("world:") or Path(root).expanduser().is_dir()


def _timing_data(cfg: ExperimentConfig, examples_needed: int) -> tuple[DataBundle, SplitSize, str]:
    """The data the steps are timed on, the split's size, and a line saying what they are."""
    data_cfg = cfg.data
    if _is_present(data_cfg.root):
        data = load_data(data_cfg, verbose=False)
        split = data_cfg.splits()[0]
        size = count_split(data.train, f"{data_cfg.task} {split} at {data_cfg.root}, as configured")
        return data, size, f"{data_cfg.task} {split} at {data_cfg.root}"
    published = PUBLISHED_TRAIN_SPLITS[data_cfg.task]
    if data_cfg.max_train or data_cfg.fraction or data_cfg.per_group or data_cfg.manifest:
        published = dataclasses.replace(
            published, source=published.source + "; the whole split: max_train / low-shot settings not applied"
        )
    world = DataConfig(
        task=data_cfg.task, root="world", world_scale=0.1, max_train=examples_needed, max_eval=1, dev_split=None
    )
    data = load_data(world, verbose=False)
    return data, published, f"the generated world's {data_cfg.task} examples ({data_cfg.root} is not there)"


def _free_bytes(folder: Path) -> int:
    """Free bytes on the volume of ``folder`` (its nearest existing parent when it does not exist yet)."""
    folder = folder.expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _model_row(role: str, name: str, module: torch.nn.Module) -> dict[str, Any]:
    tensors = [*module.parameters(), *module.buffers()]
    return {
        "role": role,
        "name": name,
        "parameters": sum(p.numel() for p in module.parameters()),
        "weight_bytes": sum(t.numel() * t.element_size() for t in tensors),
    }


def make_cost_plan(cfg: ExperimentConfig, *, steps: int = 3, warmup: int = 1, batches: int = 2) -> CostPlan:
    """Measure what training ``cfg`` costs here (see the module doc); ``steps`` timed rounds per case.

    The steps run on ``batches`` batches of ``train.batch_size`` examples (the run's own micro-batch;
    each timed step also takes an optimizer step, so with ``train.grad_accum > 1`` the run's time is
    slightly overestimated), on a GPU when there is one, with ``train.mixed_precision`` there.

    Raises:
        ConfigError / DataError: as ``vldistill train`` would for the same config.
    """
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    data, split, timed_on = _timing_data(cfg, tc.batch_size * batches)
    built = build_models(cfg, data)
    answers = data.builder.answers or None
    timed = fixed_batches(built, data.task, answers, data.train[: tc.batch_size * batches], tc.batch_size, batches)
    if not timed:
        raise ConfigError(f"{cfg.name}: the training split has no examples to time; fix: check data.root and data.*")
    examples = [ex for b in timed for ex in b.examples]
    accelerator = timing_accelerator(tc.mixed_precision)
    device = accelerator.device
    runner = StepRunner(cfg, built, timed[0], accelerator, examples)
    models = [_model_row("student", cfg.student.kind, built.student)]
    if len(built.method.projections):
        models.append(_model_row("projections", cfg.method.name, built.method.projections))
    models += [_model_row("teacher", f"{n} ({t.kind})", t) for n, t in built.method.teachers.items()]
    batches_per_epoch = math.ceil(split.examples / tc.batch_size)
    total_batches = tc.max_steps * tc.grad_accum if tc.max_steps else tc.epochs * batches_per_epoch
    memory = PeakMemory(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    root = Path(cfg.cache.dir) if cfg.cache.dir else cache_dir() / "teachers"
    plan = CostPlan(
        task=data.task,
        device=str(device),
        batch_size=tc.batch_size,
        timed_steps=steps,
        timed_on=timed_on,
        split=split,
        models=models,
        step_seconds={},
        peak_memory={},
        memory_source=memory.source,
        batches_per_epoch=batches_per_epoch,
        passes=total_batches / batches_per_epoch,
        run_seconds={},
        cache_dir=str(root),
        free_bytes=_free_bytes(root),
    )
    with tempfile.TemporaryDirectory(prefix="vldistill-cost-") as tmp:
        if built.method.teachers:
            scratch = cfg.model_copy(update={"cache": cfg.cache.model_copy(update={"dir": tmp, "enabled": True})})
            cache = open_teacher_cache(scratch, dataclasses.replace(data, train=examples), built.method)
            cases = {"live": runner.stepper(timed), "cache": runner.stepper(timed, cache)}
            plan.cache_bytes_per_example, plan.cache_bytes = cache_size_bytes(cache, split)
        else:
            cases = {"student": runner.stepper(timed)}
        timings = interleaved_times(cases, repeats=steps, warmup=warmup, sync=sync)
        plan.peak_memory = memory.measure(cases)
    plan.step_seconds = {name: ms / 1000 for name, ms in timings.median_ms("wall").items()}
    if not built.method.teachers:
        plan.run_seconds = {"student": total_batches * plan.step_seconds["student"]}
        plan.reason = "the method has no teachers, so there is no cache to build"
        return plan
    live, cached = plan.step_seconds["live"], plan.step_seconds["cache"]
    plan.run_seconds = {
        "live": total_batches * live,
        "cache": total_batches * cached,
        "cache_build": batches_per_epoch * max(live - cached, 0.0),
    }
    assert plan.cache_bytes is not None
    plan.recommendation, plan.reason = recommend(live, cached, plan.cache_bytes, plan.free_bytes, plan.passes)
    return plan


def _memory(m: Mapping[str, int | None]) -> str:
    added = "" if m.get("added") is None else f" (+{human_bytes(m['added'] or 0)} in the step)"
    return human_bytes(m["peak"] or 0) + added


def render_cost_plan(plan: CostPlan, console: Console) -> None:
    """Print ``plan``: models, split, one table of the two ways to train, and the recommendation."""
    console.print(
        f"[bold]cost plan[/bold] ({plan.task}, batch {plan.batch_size}, {plan.timed_steps} timed steps per case "
        f"on {plan.device}, on {plan.timed_on})"
    )
    models = Table(title="models")
    for col in ("role", "name", "parameters", "weights"):
        models.add_column(col, justify="right" if col in ("parameters", "weights") else "left")
    for m in plan.models:
        models.add_row(m["role"], m["name"], f"{m['parameters']:,}", human_bytes(m["weight_bytes"]))
    console.print(models)
    console.print(
        f"[bold]training split[/bold] {plan.split.examples:,} examples, {plan.split.images:,} images, "
        f"{plan.split.texts:,} texts ({plan.split.source})"
    )
    console.print(
        f"[bold]run[/bold] {plan.batches_per_epoch:,} batches per epoch, {plan.passes:.3g} passes over the split"
    )
    table = Table(title="per step and per run")
    for col in ("", "time per step", "peak memory", "whole run", "teacher cache on disk"):
        table.add_column(col, justify="left" if not col else "right")
    if "student" in plan.step_seconds:
        table.add_row(
            "student (no teachers)",
            human_seconds(plan.step_seconds["student"]),
            _memory(plan.peak_memory["student"]),
            human_seconds(plan.run_seconds["student"]),
            "-",
        )
    else:
        per_example = human_bytes(plan.cache_bytes_per_example or 0)
        table.add_row(
            "live teachers",
            human_seconds(plan.step_seconds["live"]),
            _memory(plan.peak_memory["live"]),
            human_seconds(plan.run_seconds["live"]),
            "-",
        )
        table.add_row(
            "teacher cache",
            human_seconds(plan.step_seconds["cache"]),
            _memory(plan.peak_memory["cache"]),
            f"{human_seconds(plan.run_seconds['cache'])} + build {human_seconds(plan.run_seconds['cache_build'])}",
            f"{human_bytes(plan.cache_bytes or 0)} ({per_example} per example)",
        )
    console.print(table)
    console.print(
        f"peak memory: {plan.memory_source} (vldistill.training.timing.PeakMemory); "
        f"free disk at {plan.cache_dir}: {human_bytes(plan.free_bytes)}"
    )
    verdict = {"cache": "use the teacher cache", "live": "run the teachers live", "none": "train the student alone"}
    console.print(f"[bold]recommendation[/bold] {verdict[plan.recommendation]}: {plan.reason}")
