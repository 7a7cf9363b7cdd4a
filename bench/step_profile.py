"""Where a training step of the demo's student goes, with and without the processing cache; prints JSON.

The demo trains about a hundred short runs on 2 cores, so what a step costs beside forward and
backward matters. For each mode (``uncached``: the plain ``Processor`` on every batch, as before the
cache; ``cached``: :class:`vldistill.data.loader.CachingProcessor`) this runs ``vldistill.training.train.train``
on the generated world (method ``none``, the demo's fusion student, one thread):

- ``ms_per_step``: the marginal time of a step, ``(T(long) - T(short)) / (steps(long) - steps(short))``
  over two runs of different lengths (setup, saving and the final evaluation cancel out); the median
  of ``--repeats`` pairs, the modes interleaved; ``cpu``: the process's CPU time (one thread: the
  cycles the step got, what a machine shared with other jobs does not disturb), ``wall``: wall time;
- ``profile_ms_per_step``: a cProfile of the long run, the cumulative time per step of building the
  batch (``collate``: decoding lookups, resizing, normalising, tokenizing), ``forward``, ``backward``
  and ``optimizer_step`` (cProfile inflates Python-heavy parts, so read shares, not absolute times).

    python bench/step_profile.py --json step-profile.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import vldistill.training.train as engine
from vldistill.config import parse_config
from vldistill.data.loader import CachingProcessor

DEMO_STUDENT = {
    "kind": "fusion",
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 128,
    "image_size": 64,
    "patch_size": 16,
    "max_text_len": 40,
}
PARTS = {"collate": "loader.py", "forward": "train.py", "backward": "engine.py", "optimizer_step": "engine.py"}


def _config(task: str, scale: float, epochs: int) -> Any:
    tree = {
        "name": "step-profile",
        "data": {"task": task, "root": "world", "world_scale": scale, "dev_split": None},
        "student": DEMO_STUDENT,
        "method": {"name": "none"},
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "eval_batch_size": 128,
            "lr": 1e-3,
            "eval_each_epoch": False,
            "log_every": 1000,
            "threads": 1,
        },
    }
    return parse_config(tree, "bench/step_profile.py")


def _run(cfg: Any, cached: bool, profile: cProfile.Profile | None = None) -> tuple[float, float, int]:
    engine.CachingProcessor = CachingProcessor if cached else (lambda processor: processor)  # type: ignore[assignment]
    out = Path(tempfile.mkdtemp(prefix="step-profile-"))
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        summary = engine.train(cfg, out / "run", show_progress=False)
        if profile is not None:
            profile.disable()
        return time.perf_counter() - wall, time.process_time() - cpu, summary["steps"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
        engine.CachingProcessor = CachingProcessor  # type: ignore[assignment]


def _parts(profile: cProfile.Profile, steps: int) -> dict[str, float]:
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    out = {}
    for name, module in PARTS.items():
        cumulative = sum(v[3] for (file, _, func), v in stats.items() if func == name and file.endswith(module))
        out[name] = round(1000 * cumulative / steps, 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="vqa", choices=["vqa", "snli_ve"])
    parser.add_argument("--world-scale", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, nargs=2, default=(2, 8), metavar=("SHORT", "LONG"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    short, long = (_config(args.task, args.world_scale, e) for e in args.epochs)
    _run(short, True)  # warm-up: the world generated, libraries loaded
    per_step: dict[str, dict[str, list[float]]] = {c: {"uncached": [], "cached": []} for c in ("cpu", "wall")}
    for repeat in range(args.repeats):
        for mode in ("uncached", "cached") if repeat % 2 == 0 else ("cached", "uncached"):
            wall_short, cpu_short, steps_short = _run(short, mode == "cached")
            wall_long, cpu_long, steps_long = _run(long, mode == "cached")
            per_step["cpu"][mode].append(1000 * (cpu_long - cpu_short) / (steps_long - steps_short))
            per_step["wall"][mode].append(1000 * (wall_long - wall_short) / (steps_long - steps_short))
    result: dict[str, Any] = {
        "task": args.task,
        "world_scale": args.world_scale,
        "student": DEMO_STUDENT,
        "batch_size": 32,
        "threads": 1,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "ms_per_step": {c: {m: round(statistics.median(v), 2) for m, v in ms.items()} for c, ms in per_step.items()},
        "ms_per_step_all": {c: {m: [round(x, 2) for x in v] for m, v in ms.items()} for c, ms in per_step.items()},
    }
    result["speedup"] = {c: round(ms["uncached"] / ms["cached"], 3) for c, ms in result["ms_per_step"].items()}
    result["profile_ms_per_step"] = {}
    for mode in ("uncached", "cached"):
        profile = cProfile.Profile()
        _, _, steps = _run(long, mode == "cached", profile)
        result["profile_ms_per_step"][mode] = _parts(profile, steps)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
