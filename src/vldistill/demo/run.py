"""``vldistill demo``: the embedded default, end to end, offline on 2 CPU cores.

1. the generated world (both styles; cached under the cache folder);
2. the teachers and the student's starting point, cached: a small CLIP-like model pre-trained
   contrastively on the world's captions of both styles (no real CLIP weights are reachable offline),
   and, beside it on the other core, the fusion student pre-trained with image-text matching on the
   base style's captions (``vldistill.demo.student``); the packaged MiniLM (and EfficientNet-Lite0,
   in the ablation) need no training;
3. the protocol (``configs/demo.yaml``): VQA and SNLI-VE; a text-only prior, none, kd, clip_td, mad
   under full supervision, 10% low-shot and the domain shift, 3 seeds, with dev selection and the
   image-shuffle control;
4. DiDE: the fusion model of the full condition as teacher, a plain and a distilled dual encoder;
5. the report (``DIR/report.md``, published with ``--doc``), whose main table is printed at the end.

The protocol trains two runs at once (``jobs``, ``DEMO_JOBS``), each in its own single-threaded process:
the two cores of the machine it is sized for (``vldistill.protocol.jobs``).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vldistill.config import PRESETS_DIR, _format_validation, cache_dir
from vldistill.console import make_console
from vldistill.errors import ConfigError

DEMO_NOTE = (
    "How the settings were chosen is in the comments of `configs/demo.yaml`; what was tried before they were "
    "frozen (the distillation switches one at a time, the student without its pre-training, other MAD teachers) "
    "is rerun by `vldistill demo --spec configs/demo-ablation.yaml --out runs/demo-ablation --doc "
    "docs/demo-ablation.md`, published in [demo-ablation.md](demo-ablation.md)."
)
CLIP_PLACEHOLDER = "@demo-clip"
STUDENT_PLACEHOLDER = "@demo-student"
DEMO_JOBS = 2
console = make_console(stderr=True)


def _substitute(tree: Any, old: str, new: str) -> Any:
    if isinstance(tree, dict):
        return {k: _substitute(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_substitute(v, old, new) for v in tree]
    return new if tree == old else tree


@contextlib.contextmanager
def _beside(fn: Any, world: Path, cache_root: Path, settings: dict[str, Any] | None) -> Iterator[Any]:
    """Run ``fn(world, cache_root, progress=False, **settings)`` in a single-threaded spawned process while
    the caller works on the other core; yields a function that waits for its result (None without
    ``settings``). An error in the process is raised by that function."""
    if settings is None:
        yield lambda: None
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        future = pool.submit(fn, world, cache_root, progress=False, **settings)
        yield future.result


def _one_thread() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    from vldistill.training.interrupt import die_with_parent

    die_with_parent()  # a demo killed outright does not leave its pre-training behind

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # as the command line does in its own process


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    spec_path: Path | None = None,
    progress: bool = False,
    jobs: int = DEMO_JOBS,
    seeds: list[int] | None = None,
    world_seed: int | None = None,
    doc: Path | None = None,
    command: str = "vldistill demo",
) -> Path:
    """Run the demo into ``out`` (rerun to continue an interrupted one); returns the report path.

    ``jobs``: protocol runs trained at once, each in its own process (1: one after another, here).
    ``seeds`` replaces the protocol's training seeds; ``world_seed`` draws another world (and trains
    the demo CLIP on it): checks of the demo's effects on draws its defaults did not use. ``doc``:
    also publish the report there (:func:`publish_report`; ``make demo``: ``docs/demo-report.md``),
    saying it was made by ``command``.
    """
    import torch

    from vldistill.data.world import generate_world
    from vldistill.demo.student import ensure_demo_student
    from vldistill.demo.teachers import ensure_demo_clip
    from vldistill.protocol.report import summary_table, write_report
    from vldistill.protocol.runner import ProtocolConfig, run_protocol
    from vldistill.training.experiment import world_dir

    t0 = time.perf_counter()
    # One intra-op thread: these models are small, and on a busy 2-core machine two OpenMP threads
    # spin-wait on each other (measured here: steps up to 20x slower under load).
    torch.set_num_threads(1)
    spec_path = spec_path or PRESETS_DIR / ("demo-quick.yaml" if quick else "demo.yaml")
    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    clip_settings = dict(raw.pop("demo_clip", {}) or {})
    student_settings = raw.pop("demo_student", None)
    if student_settings is None and STUDENT_PLACEHOLDER in json.dumps(raw):
        raise ConfigError(
            f"{spec_path}: '{STUDENT_PLACEHOLDER}' is used but there is no demo_student section; fix: add "
            "demo_student: {epochs: 8} (its pre-training settings) or give student.pretrained a folder"
        )
    from vldistill.data.world.scene import COLOURS, SHAPES

    for settings in (clip_settings, student_settings or {}):
        if settings.pop("hard_negatives", False):
            # Swapped-word hard negatives over the world's attribute words (demo_teachers.pretrain_clip,
            # demo_student.pretrain_fusion_itm).
            settings["negative_words"] = [list(COLOURS), list(SHAPES)]
    if student_settings is not None:
        tiny = {k: v for k, v in raw["base"]["student"].items() if k not in ("kind", "pretrained")}
        student_settings = {"student": tiny, **student_settings}
    if seeds:
        raw["seeds"] = list(seeds)
    if world_seed is not None:
        raw["base"]["data"]["world_seed"] = int(world_seed)
    scale = float(raw["base"]["data"].get("world_scale", 1.0))
    wseed = int(raw["base"]["data"].get("world_seed", 0))
    world = world_dir(scale, wseed)
    console.print(f"[1/4] generated world (scale {scale:g}, seed {wseed}) at {world}")
    generate_world(world, style="both", seed=wseed, scale=scale)
    console.print(
        "[2/4] teachers: a small CLIP pre-trained on the world's captions (the packaged MiniLM and "
        "EfficientNet-Lite0 need no training)"
        + ("; the student pre-trained with image-text matching (beside the CLIP)" if student_settings else "")
    )
    student_dir = None
    with _beside(ensure_demo_student, world, cache_dir() / "demo-students", student_settings) as student_job:
        clip_dir = ensure_demo_clip(world, cache_dir() / "demo-teachers", progress=progress, **clip_settings)
        student_dir = student_job()
    stats_file = clip_dir / "demo_clip.json"
    raw = _substitute(raw, CLIP_PLACEHOLDER, str(clip_dir))
    if student_dir is not None:
        raw = _substitute(raw, STUDENT_PLACEHOLDER, str(student_dir))
    try:
        spec = ProtocolConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, str(spec_path))) from None
    console.print(
        f"[3/4] protocol: {', '.join(spec.tasks)} x {len(spec.conditions)} conditions (+ shift) x "
        f"{len(spec.methods)} methods x {len(spec.seeds)} seeds -> {out}"
    )
    run_protocol(spec, out, show_progress=progress, jobs=jobs)
    console.print("[4/4] report")
    teacher_stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    student_stats = json.loads((student_dir / "demo_clip.json").read_text()) if student_dir is not None else {}
    (out / "teachers.json").write_text(
        json.dumps({"demo_clip": teacher_stats, "demo_student": student_stats}, indent=1)
    )
    report = write_report(out)
    seconds = round(time.perf_counter() - t0, 1)
    # Wall clock over every invocation into this folder (a continued demo adds to the first's).
    previous = json.loads((out / "demo.json").read_text()) if (out / "demo.json").is_file() else {}
    total = round(float(previous.get("seconds_total", previous.get("seconds_this_invocation", 0.0))) + seconds, 1)
    (out / "demo.json").write_text(
        json.dumps(
            {
                "seconds_this_invocation": seconds,
                "seconds_total": total,
                "quick": quick,
                "spec": str(spec_path),
                "seeds": list(spec.seeds),
                "world_seed": wseed,
                "demo_clip": teacher_stats,
                "demo_student": student_stats,
            },
            indent=1,
        )
    )
    if doc is not None:
        notes = [] if spec_path != PRESETS_DIR / "demo.yaml" else [DEMO_NOTE]
        title = "The demo's report" if spec.name == "demo" else f"The `{spec.name}` report"
        publish_report(out, Path(doc), seconds=seconds, total_seconds=total, command=command, notes=notes, title=title)
        console.print(f"published: {doc}")
    make_console().print(summary_table(out))
    console.print(f"report: {report} ({seconds} s)")
    return report


def _machine() -> str:
    """``"<CPU model>, <n> CPUs, <RAM> GiB RAM"`` of this machine (Linux; parts it cannot read are left out)."""
    import os
    import platform

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [model] if model else []
    parts.append(f"{os.cpu_count()} CPUs")
    try:
        parts.append(f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM")
    except (ValueError, OSError, AttributeError):
        pass
    return ", ".join(parts)


def publish_report(
    out: Path,
    doc: Path,
    *,
    seconds: float,
    command: str,
    total_seconds: float | None = None,
    notes: Sequence[str] = (),
    title: str = "The demo's report",
) -> Path:
    """Copy ``out/report.md`` to ``doc`` (e.g. ``docs/demo-report.md``) under a header saying what made
    it, and its plots to ``doc``'s sibling folder ``<stem>/`` (links rewritten); returns ``doc``.

    The header records the command, the date (UTC), the machine, this invocation's wall-clock seconds
    and the largest process's peak resident memory (``getrusage``: this process or one run's worker,
    whichever is larger; the runs trained side by side add up to about ``jobs`` times a worker's).
    ``total_seconds``: the wall clock over every invocation into ``out`` (when it continued an earlier
    one); ``notes``: paragraphs added under the header (e.g. where the settings' history is).
    """
    import datetime
    import resource
    import shutil

    figures = doc.parent / doc.stem
    figures.mkdir(parents=True, exist_ok=True)
    for stale in figures.glob("*.png"):
        stale.unlink()
    body = (out / "report.md").read_text(encoding="utf-8")
    for png in sorted(out.glob("*.png")):
        shutil.copy2(png, figures / png.name)
        body = body.replace(f"]({png.name})", f"]({figures.name}/{png.name})")
    shutil.copy2(out / "summary.csv", figures / "summary.csv")
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    over_all = (
        "" if total_seconds is None or total_seconds <= seconds else f" ({total_seconds:.0f} s over all invocations)"
    )
    header = [
        f"# {title}",
        "",
        f"Written by `{command}` on {when}, on {_machine()}: {seconds:.0f} s wall clock for this invocation"
        f"{over_all} (the world, the teachers, every run not already done in the folder, the report; a fresh clone's "
        "`make demo` adds the install), largest process peak resident memory "
        f"{peak_kib / 2**20:.2f} GiB. Everything below is `{out / 'report.md'}` as the run wrote it; "
        f"the plots and `summary.csv` are in [{figures.name}/]({figures.name}/). Rerun the command to regenerate it.",
        "",
    ]
    for note in notes:
        header += [note, ""]
    body = body.split("\n", 1)[1] if body.startswith("# ") else body  # the report's own title
    doc.write_text("\n".join(header) + body, encoding="utf-8")
    return doc
