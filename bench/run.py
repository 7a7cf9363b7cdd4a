"""Benchmarks: what distillation costs per training step, and how fast the distilled dual encoder answers.

Every figure is a ratio of the medians of two cases timed side by side in this process: each
round runs every case of a group once, in an order that rotates from round to round, after warm-up
rounds. Interleaving and medians keep the ratios honest on a machine that other jobs share.

    python bench/run.py --quick --json bench-quick.json    # < 5 minutes on 2 CPU cores
    python bench/run.py --json bench.json                  # more repeats, batch 32, plus the demo
    python bench/run.py --real-size --json bench-real.json # the presets' sizes, random weights, batch 4

Figures (see BENCHMARKS.md for results and targets):
- ``cache_overhead_ratio``: a ``mad`` step reading the teacher cache / a ``none`` step.
- ``live_teacher_ratio``: a ``mad`` step running its teachers live / a ``none`` step.
- ``trainer_overhead_ratio``: a ``none`` step on vldistill's training path / a bare PyTorch step.
- ``dual_vs_fusion_speedup_precomputed``: ViLT time per question / the dual encoder's, images encoded
  once up front; ``..._amortized`` encodes the images inside the timed call, once per image;
  ``..._cold`` encodes each question's image again.

Each case's peak memory (``peak_memory_mib``) is measured on one more call after the timed rounds
(:class:`vldistill.training.timing.PeakMemory` says how). The timed training step is the training loop's
own (:class:`vldistill.training.timing.StepRunner`, which ``vldistill plan --cost`` times too); the ``mad``
cache and live cases step one student, so they differ only in where the teachers' targets come from.

``--real-size`` builds the real-size presets' architectures with random weights (no download): a
ViLT-B/32 student (hidden 768, 12 layers, 12 heads, 384 px, patch 32, 40 text tokens); as ``mad``
teachers a ViT-B/16 at 224 px (the shape of CLIP ViT-B/16's image tower) and a 12-layer, 768-wide
text encoder (RoBERTa-base's shape; BERT's 30,522-word vocabulary instead of RoBERTa's 50,265, which
changes the embedding table, not the compute); the dual encoder's towers as deep as the ViLT.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from vldistill.config import ExperimentConfig, parse_config
from vldistill.data.loader import Batch, ImageStore
from vldistill.models.dual import TowerEncoding
from vldistill.models.heads import task_loss
from vldistill.models.students import StudentConfig, build_student
from vldistill.training.cache import open_teacher_cache
from vldistill.training.experiment import DataBundle, build_models, load_data, student_processor
from vldistill.training.timing import (
    PeakMemory,
    StepRunner,
    fixed_batches,
    interleaved_times,
    timing_accelerator,
)
from vldistill.training.train import batch_to_device

STUDENT = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 512,
    "image_size": 64,
    "patch_size": 8,
}
PACKAGED_TEACHERS = {
    "vision": {"kind": "vision", "pretrained": "efficientnet-lite0", "image_size": 64},
    "text": {"kind": "text", "pretrained": "minilm"},
}
BASE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072}  # BERT/ViT-Base
REAL_SIZE_STUDENT = {**BASE, "image_size": 384, "patch_size": 32, "max_text_len": 40}  # ViLT-B/32
REAL_SIZE_TEACHERS = {
    "vision": {"kind": "vision", "tiny": {**BASE, "patch_size": 16}, "image_size": 224},  # CLIP ViT-B/16's image tower
    "text": {"kind": "text", "tiny": BASE},  # RoBERTa-base's shape
}


@dataclass(frozen=True)
class Setting:
    """Sizes and repeat counts of one benchmark run (all recorded in the JSON)."""

    student: dict[str, int] = field(default_factory=lambda: dict(STUDENT))
    teachers: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(PACKAGED_TEACHERS))
    batch_size: int = 32
    train_batches: int = 4  # distinct batches the training steps cycle through
    images: int = 16  # images per inference call
    questions_per_image: int = 5
    world_scale: float = 0.1
    repeats: int = 40
    warmup: int = 5
    bare: bool = True  # also time a bare PyTorch step (trainer_overhead_ratio)
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)  # figure -> target, over FIGURES


QUICK = Setting(batch_size=16, images=8, repeats=15, warmup=3)
FULL = Setting()
REAL_SIZE = Setting(
    student=dict(REAL_SIZE_STUDENT),
    teachers=dict(REAL_SIZE_TEACHERS),
    batch_size=4,
    train_batches=2,
    images=2,
    questions_per_image=5,
    repeats=15,  # 5 left cache_overhead_ratio within +-10% of itself (0.92 once, 2 threads): too few to judge 1.05
    warmup=1,
    bare=False,
    targets={"cache_overhead_ratio": ("<=", 1.05)},  # the goal at real size: a cached step within 5% of a plain one
)
# A figure: (name, numerator case, denominator case, target as (comparison, bound) or None).
FIGURES: list[tuple[str, str, str, tuple[str, float] | None]] = [
    ("cache_overhead_ratio", "train_mad_cache", "train_none", ("<=", 1.10)),
    ("live_teacher_ratio", "train_mad_live", "train_none", None),
    ("trainer_overhead_ratio", "train_none", "bare_none", ("<=", 1.10)),
    ("dual_vs_fusion_speedup_precomputed", "fusion", "dual_precomputed", (">=", 4.0)),
    ("dual_vs_fusion_speedup_amortized", "fusion", "dual_amortized", None),
    ("dual_vs_fusion_speedup_cold", "fusion", "dual_cold", None),
]


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
    cycle = itertools.cycle([batch_to_device(b, device) for b in batches])

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
    """The training steps: ``none``, ``mad`` reading the cache and ``mad`` with live teachers (one student,
    so the two differ only in where the targets come from), and the bare loop (``setting.bare``).

    The ``none`` and ``mad`` students start from the same weights; the cache holds the timed batches' rows.
    """
    none_cfg = experiment_config("none", setting, workdir / "teachers")
    mad_cfg = experiment_config("mad", setting, workdir / "teachers")
    accelerator = timing_accelerator(device=device)
    none_built = build_models(none_cfg, data)
    answers = data.builder.answers or None
    batches = fixed_batches(none_built, data.task, answers, data.train, setting.batch_size, setting.train_batches)
    none = StepRunner(none_cfg, none_built, batches[0], accelerator)
    mad_built = build_models(mad_cfg, data)
    mad = StepRunner(mad_cfg, mad_built, batches[0], accelerator)
    timed = replace(data, train=[ex for b in batches for ex in b.examples])
    cache = open_teacher_cache(mad_cfg, timed, mad_built.method, store=ImageStore())
    cases = {
        "train_none": none.stepper(batches),
        "train_mad_cache": mad.stepper(batches, cache),
        "train_mad_live": mad.stepper(batches),
    }
    if setting.bare:
        cases["bare_none"] = bare_step(none_cfg, data, batches, device)
    return cases


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


def _mib(memory: dict[str, dict[str, int | None]]) -> dict[str, dict[str, float | None]]:
    return {
        case: {k: None if v is None else round(v / 2**20, 1) for k, v in values.items()}
        for case, values in memory.items()
    }


def run_benchmarks(setting: Setting, workdir: Path, device: torch.device) -> dict[str, Any]:
    """Time every case; return the figures, the medians (ms per step; ms per question) and peak memory (MiB)."""
    data = load_data(experiment_config("none", setting, workdir).data)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    memory = PeakMemory(device)
    print("timing training steps ...", file=sys.stderr)
    cases = training_cases(setting, data, workdir, device)
    train = interleaved_times(cases, repeats=setting.repeats, warmup=setting.warmup, sync=sync)
    peaks = {"train_step": _mib(memory.measure(cases))}
    del cases  # the training models go before the inference ones are built
    gc.collect()
    print("timing inference ...", file=sys.stderr)
    cases = inference_cases(setting, data, device)
    infer = interleaved_times(cases, repeats=setting.repeats, warmup=setting.warmup, sync=sync)
    peaks["inference_call"] = _mib(memory.measure(cases))
    questions = setting.images * setting.questions_per_image
    clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)
    groups = (("train_step_ms", train, 1), ("inference_ms_per_question", infer, questions))
    medians = {f"{group}_{clock}": timings.median_ms(clock, per) for group, timings, per in groups for clock in clocks}
    figures = {}
    for name, num, den, target in FIGURES:
        target = setting.targets.get(name, target)
        timings = train if num in train.wall else infer
        if num not in timings.wall or den not in timings.wall:
            continue  # a case this setting does not time (bare_none with --real-size)
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
    return {
        "figures": figures,
        "medians": medians,
        "peak_memory_mib": peaks,
        "peak_memory_source": memory.source,
    }


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
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller, no demo (< 5 min, 2 cores)")
    size.add_argument(
        "--real-size", action="store_true", help="the presets' model sizes, random weights, batch 4, no demo"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (overrides the setting)")
    parser.add_argument("--skip-demo", action="store_true", help="do not time `vldistill demo` (full run)")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()  # the packaged MiniLM's unused-pooler load report is not news here
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    setting = REAL_SIZE if args.real_size else QUICK if args.quick else FULL
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
    if not (args.quick or args.real_size):
        result["demo_seconds"] = "skipped (--skip-demo)" if args.skip_demo else demo_seconds()
    for name, fig in result["figures"].items():
        verdict = {True: "ok", False: "MISSES", None: ""}[fig["meets_target"]]
        cpu = f"(cpu time {fig['cpu_time_value']:.3f})" if "cpu_time_value" in fig else ""
        print(f"{name:38s} {fig['value']:8.3f}  {fig['target'] or '':8s} {verdict:7s} {cpu}")
    for group, values in result["medians"].items():
        print(group + ": " + ", ".join(f"{n} {v:.2f}" for n, v in values.items()))
    for group, cases in result["peak_memory_mib"].items():
        line = ", ".join(
            f"{n} {m['peak']}" + ("" if m["added"] is None else f" (+{m['added']})") for n, m in cases.items()
        )
        print(f"{group}_peak_memory_mib ({result['peak_memory_source']}): {line}")
    if "demo_seconds" in result:
        print(f"demo_seconds: {result['demo_seconds']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not all(math.isfinite(f["value"]) for f in result["figures"].values()):
        raise SystemExit("a figure is not finite")
    return result


if __name__ == "__main__":
    main()
