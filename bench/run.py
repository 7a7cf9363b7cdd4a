"""Benchmarks: what distillation costs per training step, and how fast the distilled dual encoder answers.

Every figure is a ratio of the medians of two cases timed side by side in this process: each
round runs every case of a group once, in an order that rotates from round to round, after warm-up
rounds. Interleaving and medians keep the ratios honest on a machine that other jobs share.

    python bench/run.py --quick --json bench-quick.json    # < 5 minutes on 2 CPU cores
    python bench/run.py --json bench.json                  # more repeats, batch 32, plus the demo

Figures (see BENCHMARKS.md for results and targets):
- ``cache_overhead_ratio``: a ``mad`` step reading the teacher cache / a ``none`` step.
- ``live_teacher_ratio``: a ``mad`` step running its teachers live / a ``none`` step.
- ``trainer_overhead_ratio``: a ``none`` step on vldistill's training path / a bare PyTorch step.
- ``dual_vs_fusion_speedup_precomputed``: ViLT time per question / the dual encoder's, images encoded
  once up front; ``..._amortized`` encodes the images inside the timed call, once per image;
  ``..._cold`` encodes each question's image again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs
from transformers import get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

from vldistill.config import ExperimentConfig, parse_config
from vldistill.data.loader import Batch, ExampleDataset, ImageStore, collate_fn
from vldistill.models.dual import TowerEncoding
from vldistill.models.heads import task_loss
from vldistill.models.students import StudentConfig, build_student
from vldistill.training.cache import open_teacher_cache
from vldistill.training.engine import optimizer_step
from vldistill.training.experiment import Built, DataBundle, build_models, load_data, student_processor
from vldistill.training.train import (
    DistillModel,
    batch_to_device,
    build_optimizer,
    micro_step,
    teacher_targets_for_batch,
)

STUDENT = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 512,
    "image_size": 64,
    "patch_size": 8,
}
REAL_TEACHERS = {
    "vision": {"kind": "vision", "pretrained": "efficientnet-lite0", "image_size": 64},
    "text": {"kind": "text", "pretrained": "minilm"},
}


@dataclass(frozen=True)
class Setting:
    """Sizes and repeat counts of one benchmark run (all recorded in the JSON)."""

    student: dict[str, int] = field(default_factory=lambda: dict(STUDENT))
    teachers: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(REAL_TEACHERS))
    batch_size: int = 32
    train_batches: int = 4  # distinct batches the training steps cycle through
    images: int = 16  # images per inference call
    questions_per_image: int = 5
    world_scale: float = 0.1
    repeats: int = 40
    warmup: int = 5


QUICK = Setting(batch_size=16, images=8, repeats=15, warmup=3)
FULL = Setting()
# A figure: (name, numerator case, denominator case, target as (comparison, bound) or None).
FIGURES: list[tuple[str, str, str, tuple[str, float] | None]] = [
    ("cache_overhead_ratio", "train_mad_cache", "train_none", ("<=", 1.10)),
    ("live_teacher_ratio", "train_mad_live", "train_none", None),
    ("trainer_overhead_ratio", "train_none", "bare_none", ("<=", 1.10)),
    ("dual_vs_fusion_speedup_precomputed", "fusion", "dual_precomputed", (">=", 4.0)),
    ("dual_vs_fusion_speedup_amortized", "fusion", "dual_amortized", None),
    ("dual_vs_fusion_speedup_cold", "fusion", "dual_cold", None),
]


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


def experiment_config(method: str, setting: Setting, cache_dir: Path) -> ExperimentConfig:
    """The benchmark's VQA experiment on the generated world (``mad`` uses ``setting.teachers``)."""
    return parse_config(
        {
            "data": {"task": "vqa", "root": "world", "world_scale": setting.world_scale},
            "student": dict(setting.student),
            "method": {"name": method, "teachers": setting.teachers if method == "mad" else {}},
            "train": {"batch_size": setting.batch_size},
            "cache": {"enabled": method == "mad", "dir": str(cache_dir)},
        },
        "bench",
    )


def _train_batches(data: DataBundle, built: Built, setting: Setting, device: torch.device) -> list[Batch]:
    collate = collate_fn(built.processor, data.task, data.builder.answers or None)
    loader = torch.utils.data.DataLoader(
        ExampleDataset(data.train, ImageStore()), batch_size=setting.batch_size, collate_fn=collate, drop_last=True
    )
    return [batch_to_device(b, device) for b in itertools.islice(loader, setting.train_batches)]


def vldistill_step(
    cfg: ExperimentConfig, data: DataBundle, batches: list[Batch], accelerator: Accelerator, *, use_cache: bool
) -> Callable[[], None]:
    """One optimizer step per call on the very path of ``vldistill.training.train`` (batches cycled)."""
    device, tc = accelerator.device, cfg.train
    built = build_models(cfg, data)
    built.student.to(device)
    for teacher in built.method.teachers.values():
        teacher.to(device)
    cache = None
    if use_cache and built.method.teachers:
        cache = open_teacher_cache(cfg, data, built.method, store=ImageStore())
    with torch.no_grad():
        sample = built.student(batches[0].student, output_cross_attention=built.method.needs_cross_attention)
    built.method.setup(sample, teacher_targets_for_batch(built, batches[0], cache, device))
    built.method.projections.to(device)
    model = DistillModel(built.student, built.method)
    optimizer = build_optimizer(model, tc)
    scheduler = get_linear_schedule_with_warmup(optimizer, 10, 100_000)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    cycle = itertools.cycle(batches)

    def step() -> None:
        batch = batch_to_device(next(cycle), device)
        targets = teacher_targets_for_batch(built, batch, cache, device)
        terms = micro_step(model, batch, targets, accelerator)
        optimizer_step(accelerator, model, optimizer, scheduler, tc.max_grad_norm)
        for v in terms.values():  # the loop's per-term bookkeeping
            float(v.detach())

    return step


def bare_step(
    cfg: ExperimentConfig, data: DataBundle, batches: list[Batch], device: torch.device
) -> Callable[[], None]:
    """The same student and batches in a plain PyTorch loop: forward, task loss, backward, AdamW.

    The optimizer is the trainer's (fused AdamW), so the ratio measures the trainer, not the kernel.
    """
    student = build_models(cfg, data).student.to(device)
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True
    )
    cycle = itertools.cycle(batches)

    def step() -> None:
        batch = next(cycle)
        loss = task_loss(batch.task, student(batch.student).logits, batch.targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def training_cases(
    setting: Setting, data: DataBundle, workdir: Path, device: torch.device
) -> dict[str, Callable[[], None]]:
    """The four training steps, each with its own student (same initial weights) and optimizer."""
    none_cfg = experiment_config("none", setting, workdir / "teachers")
    mad_cfg = experiment_config("mad", setting, workdir / "teachers")
    batches = _train_batches(data, build_models(none_cfg, data), setting, device)
    accelerator = Accelerator(
        mixed_precision="no",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        cpu=device.type == "cpu",
    )
    return {
        "train_none": vldistill_step(none_cfg, data, batches, accelerator, use_cache=False),
        "train_mad_cache": vldistill_step(mad_cfg, data, batches, accelerator, use_cache=True),
        "train_mad_live": vldistill_step(mad_cfg, data, batches, accelerator, use_cache=False),
        "bare_none": bare_step(none_cfg, data, batches, device),
    }


def inference_cases(setting: Setting, data: DataBundle, device: torch.device) -> dict[str, Callable[[], object]]:
    """VQA answering of ``images x questions_per_image`` questions per call by each student.

    The dual encoder and ViLT have the same width, depth and patch grid (each dual tower as deep as
    ViLT). Questions are the world's; question ``j`` is asked about image ``j // questions_per_image``.
    """
    answers = data.builder.answers or None
    students = {}
    for kind in ("dual", "fusion"):
        torch.manual_seed(0)
        cfg = StudentConfig(kind=kind, **setting.student)
        students[kind] = build_student(cfg, data.task, data.builder.num_labels, answers).to(device).eval()
    processor = student_processor(StudentConfig(kind="dual", **setting.student))
    q = setting.questions_per_image
    n_questions = setting.images * q
    examples = list(itertools.islice(itertools.cycle(data.train), n_questions))
    store = ImageStore()
    image_of = [store(examples[i * q].images[0]) for i in range(setting.images)]
    inputs = processor(examples, [[image_of[j // q]] for j in range(n_questions)]).to(device)
    unique_pixels = inputs.pixel_values[::q]
    rows = torch.arange(n_questions, device=device) // q
    dual, fusion = students["dual"], students["fusion"]
    with torch.no_grad():
        cached = dual.encode_images(unique_pixels)

    @torch.no_grad()
    def answer_with(images: TowerEncoding | None) -> torch.Tensor:
        """Logits of every question; ``None``: encode the unique images here, once each."""
        images = dual.encode_images(unique_pixels) if images is None else images
        texts = dual.encode_texts(inputs.input_ids, inputs.attention_mask)
        return dual.forward_encoded(images.select(rows), texts, inputs).logits

    return {
        "fusion": torch.no_grad()(lambda: fusion(inputs).logits),
        "dual_precomputed": lambda: answer_with(cached),
        "dual_amortized": lambda: answer_with(None),
        "dual_cold": torch.no_grad()(lambda: dual(inputs).logits),
    }


def run_benchmarks(setting: Setting, workdir: Path, device: torch.device) -> dict[str, Any]:
    """Time every case; return the figures and the medians (ms per step; ms per question)."""
    data = load_data(experiment_config("none", setting, workdir).data)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train = interleaved_times(
        training_cases(setting, data, workdir, device), repeats=setting.repeats, warmup=setting.warmup, sync=sync
    )
    infer = interleaved_times(
        inference_cases(setting, data, device), repeats=setting.repeats, warmup=setting.warmup, sync=sync
    )
    questions = setting.images * setting.questions_per_image
    clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)
    groups = (("train_step_ms", train, 1), ("inference_ms_per_question", infer, questions))
    medians = {f"{group}_{clock}": timings.median_ms(clock, per) for group, timings, per in groups for clock in clocks}
    figures = {}
    for name, num, den, target in FIGURES:
        timings = train if num in train.wall else infer
        value = timings.ratio(num, den)
        meets = None if target is None else (value <= target[1] if target[0] == "<=" else value >= target[1])
        figures[name] = {
            "value": round(value, 4),
            "numerator": num,
            "denominator": den,
            "target": None if target is None else f"{target[0]} {target[1]}",
            "meets_target": meets,
        }
        if "cpu" in clocks:
            figures[name]["cpu_time_value"] = round(timings.ratio(num, den, "cpu"), 4)
    return {"figures": figures, "medians": medians}


def demo_seconds(timeout: int = 3600) -> float | str:
    """Wall time of ``vldistill demo`` end to end, or ``"not available"`` without that command."""
    cli = [sys.executable, "-m", "vldistill"]
    if subprocess.run([*cli, "demo", "--help"], capture_output=True).returncode != 0:
        return "not available"
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        try:
            proc = subprocess.run([*cli, "demo", "--out", out], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout} s"
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
    return round(elapsed, 1)


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, library versions and device name."""
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), None
    )
    info["cpu"] = model or platform.processor()
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    info["ram_gib"] = round(kb / 2**20, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller, no demo (< 5 min, 2 cores)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (overrides the setting)")
    parser.add_argument("--skip-demo", action="store_true", help="do not time `vldistill demo` (full run)")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()  # the packaged MiniLM's unused-pooler load report is not news here
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    setting = QUICK if args.quick else FULL
    if args.repeats:
        setting = replace(setting, repeats=args.repeats)
    device = torch.device(args.device)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    with tempfile.TemporaryDirectory(prefix="vldistill-bench-") as workdir:
        result = run_benchmarks(setting, Path(workdir), device)
    result = {
        "command": " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": started,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "setting": asdict(setting),
        **result,
    }
    if not args.quick:
        result["demo_seconds"] = "skipped (--skip-demo)" if args.skip_demo else demo_seconds()
    for name, fig in result["figures"].items():
        verdict = {True: "ok", False: "MISSES", None: ""}[fig["meets_target"]]
        cpu = f"(cpu time {fig['cpu_time_value']:.3f})" if "cpu_time_value" in fig else ""
        print(f"{name:38s} {fig['value']:8.3f}  {fig['target'] or '':8s} {verdict:7s} {cpu}")
    for group, values in result["medians"].items():
        print(group + ": " + ", ".join(f"{n} {v:.2f}" for n, v in values.items()))
    if "demo_seconds" in result:
        print(f"demo_seconds: {result['demo_seconds']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not all(math.isfinite(f["value"]) for f in result["figures"].values()):
        raise SystemExit("a figure is not finite")
    return result


if __name__ == "__main__":
    main()
