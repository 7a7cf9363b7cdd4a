"""Timing and peak memory of training steps, shared by ``vldistill plan --cost`` and ``bench/run.py``.

A timed step is the training loop's own step (:func:`vldistill.training.train.micro_step` and
:func:`vldistill.training.engine.optimizer_step` on a :class:`~vldistill.training.train.DistillModel`), not a
second loop: what is measured here is what ``vldistill train`` runs.

Several cases are timed side by side (:func:`interleaved_times`): each round runs every case once, in
an order that rotates from round to round, after warm-up rounds, and a figure is a ratio of medians.
Interleaving and medians keep ratios honest on a machine that other jobs share.
"""

from __future__ import annotations

import ctypes
import itertools
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs
from transformers import get_linear_schedule_with_warmup

from vldistill.config import ExperimentConfig
from vldistill.data.examples import TaskExample
from vldistill.data.loader import Batch, ExampleDataset, ImageStore, collate_fn
from vldistill.training.engine import build_optimizer, optimizer_step
from vldistill.training.experiment import Built
from vldistill.training.train import DistillModel, batch_to_device, micro_step, teacher_targets_for_batch


@dataclass
class Timings:
    """Seconds per call of each case: ``wall`` (``time.perf_counter``) and ``cpu`` (this process's CPU
    time, all threads: on a shared machine it counts only the cycles we got, not the waiting)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def ratio(self, numerator: str, denominator: str, clock: str = "wall") -> float:
        """``median(numerator) / median(denominator)`` on ``clock``."""
        times = getattr(self, clock)
        return statistics.median(times[numerator]) / statistics.median(times[denominator])

    def median_ms(self, clock: str = "wall", per: int = 1) -> dict[str, float]:
        return {n: round(1000 * statistics.median(t) / per, 3) for n, t in getattr(self, clock).items()}


def interleaved_times(
    cases: dict[str, Callable[[], object]], *, repeats: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> Timings:
    """Time each case over ``repeats`` rounds; round ``r`` runs the cases starting at number ``r mod n``.

    ``warmup`` untimed rounds come first; ``sync`` (e.g. ``torch.cuda.synchronize``) runs before
    each clock read so that asynchronous devices are timed to completion.
    """
    names = list(cases)
    timings = Timings({n: [] for n in names}, {n: [] for n in names})
    for r in range(warmup + repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            cases[name]()
            sync()
            if r >= warmup:
                timings.wall[name].append(time.perf_counter() - wall)
                timings.cpu[name].append(time.process_time() - cpu)
    return timings


class PeakMemory:
    """The peak memory of a call, in bytes, by the best means the platform has.

    - ``cuda_max_memory_allocated`` (``device`` is a GPU): ``torch.cuda.reset_peak_memory_stats`` before,
      ``torch.cuda.max_memory_allocated`` after: the most bytes held by tensors at once (PyTorch's CUDA
      memory notes); models, optimizer state and activations, not the allocator's reserve.
    - ``peak_rss`` (CPU, Linux): freed heap is first handed back to the system (glibc's ``malloc_trim``,
      where there is one), then writing ``5`` to ``/proc/self/clear_refs`` resets the process's peak
      resident set size, read back as ``VmHWM`` from ``/proc/self/status`` (Linux ``proc(5)``): the
      whole process's peak while the call ran, the interpreter and every model it holds included.
    - ``ru_maxrss`` (CPU elsewhere): ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the process's
      lifetime peak, which cannot be reset: an upper bound.

    ``tracemalloc`` is not used: it sees Python's allocations, not the tensors' (PyTorch allocates
    those in C++).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self.source = "cuda_max_memory_allocated"
        elif _can_reset_peak_rss():
            self.source = "peak_rss"
        else:
            self.source = "ru_maxrss"

    def current(self) -> int | None:
        """Bytes held now (tensors on the GPU; resident set on Linux), ``None`` where it cannot be read."""
        if self.source == "cuda_max_memory_allocated":
            return int(torch.cuda.memory_allocated(self.device))
        if self.source == "peak_rss":
            return _status_kib("VmRSS:") * 1024
        return None

    def reset(self) -> None:
        if self.source == "cuda_max_memory_allocated":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.source == "peak_rss":
            _trim_heap()
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        """The peak since :meth:`reset`, bytes."""
        if self.source == "cuda_max_memory_allocated":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.source == "peak_rss":
            return _status_kib("VmHWM:") * 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux

    def measure(self, cases: dict[str, Callable[[], object]]) -> dict[str, dict[str, int | None]]:
        """Call each case once more: ``{case: {"peak": bytes, "added": bytes above what was held before}}``.

        Run after the timed rounds, not inside them: handing the heap back makes the next call fault
        its pages in again, which would slow the call being timed. ``added`` is ``None`` on ``ru_maxrss``.
        """
        out: dict[str, dict[str, int | None]] = {}
        for name, call in cases.items():
            self.reset()
            before = self.current()
            call()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            peak = self.peak()
            out[name] = {"peak": peak, "added": None if before is None else max(peak - before, 0)}
        return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _trim_heap() -> None:
    """Return freed heap to the system (glibc ``malloc_trim(0)``), so that the resident set is what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak then includes heap kept from earlier calls
        return


def _can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM:")
        _status_kib("VmRSS:")
        return True
    except OSError:
        return False


def timing_accelerator(mixed_precision: str = "no", device: torch.device | str | None = None) -> Accelerator:
    """A single-process accelerator as the training loop's (global batch split, no trackers).

    ``device``: ``cpu`` forces the CPU; by default a GPU when there is one, with ``mixed_precision``
    (bf16 / fp16 apply on GPUs only, as in ``vldistill train``).
    """
    cpu = not torch.cuda.is_available() if device is None else torch.device(device).type == "cpu"
    return Accelerator(
        cpu=cpu,
        mixed_precision="no" if cpu else mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def fixed_batches(
    built: Built, task: str, answers: list[str] | None, examples: Sequence[TaskExample], batch_size: int, count: int
) -> list[Batch]:
    """Up to ``count`` batches of ``batch_size`` of ``examples``, in order, collated by the student's processor."""
    loader = torch.utils.data.DataLoader(
        ExampleDataset(list(examples), ImageStore()),
        batch_size=batch_size,
        collate_fn=collate_fn(built.processor, task, answers),
    )
    return list(itertools.islice(loader, count))


class StepRunner:
    """A student and its method set up as ``vldistill train`` sets them up, stepped one batch per call.

    The setup follows ``train``: models on the accelerator's device, the projections' widths fixed by
    the first batch (teachers run live on it), ``method.prepare`` on ``examples`` (``target_norm``
    statistics), AdamW as :func:`~vldistill.training.engine.build_optimizer` builds it, a linear schedule,
    ``accelerator.prepare``. :meth:`stepper` then returns a function that runs one training step
    (forward, loss terms, backward, clipping, optimizer and scheduler step, the loop's per-term
    bookkeeping) on the next of some batches, its teacher targets read from ``cache`` or computed live
    (``cache=None``): steppers of one runner share the student and optimizer.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        built: Built,
        first: Batch,
        accelerator: Accelerator,
        examples: Sequence[TaskExample] = (),
    ) -> None:
        self.built, self.accelerator, self.cfg = built, accelerator, cfg
        device = accelerator.device
        built.student.to(device)
        for teacher in built.method.teachers.values():
            teacher.to(device)
        first = batch_to_device(first, device)
        with torch.no_grad():
            sample = built.student(first.student, output_cross_attention=built.method.needs_cross_attention)
        built.method.setup(sample, teacher_targets_for_batch(built, first, None, device))
        if examples:
            built.method.prepare(list(examples), None, store=ImageStore(), batch_size=cfg.train.batch_size)
        built.method.to(device)
        model = DistillModel(built.student, built.method)
        optimizer = build_optimizer(model, cfg.train)
        scheduler = get_linear_schedule_with_warmup(optimizer, 10, 100_000)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)

    def stepper(self, batches: Sequence[Batch], cache: Any = None) -> Callable[[], None]:
        """One optimizer step per call on the next of ``batches`` (cycled); targets from ``cache`` or live."""
        device = self.accelerator.device
        cycle = itertools.cycle([batch_to_device(b, device) for b in batches])

        def step() -> None:
            batch = next(cycle)
            targets = teacher_targets_for_batch(self.built, batch, cache, device)
            terms = micro_step(self.model, batch, targets, self.accelerator)
            optimizer_step(self.accelerator, self.model, self.optimizer, self.scheduler, self.cfg.train.max_grad_norm)
            for v in terms.values():  # the loop's per-term bookkeeping
                float(v.detach())

        return step
