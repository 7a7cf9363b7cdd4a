"""``vldistill demo``: the embedded default, end to end, offline on 2 CPU cores.

1. the generated world (both styles; cached under the cache folder);
2. the teachers: the real pretrained unimodal ones that ship as packages (EfficientNet-Lite0 for
   images, MiniLM for text) and a small CLIP-like model pre-trained contrastively on the world's
   captions of both styles (no real CLIP weights are reachable offline); all cached;
3. the protocol (``configs/demo.yaml``): VQA and SNLI-VE; none, kd, clip_td, mad under full
   supervision, two low-shot fractions and the domain shift, 3 seeds;
4. DiDE: the fusion model of the full condition as teacher, a plain and a distilled dual encoder;
5. the report (``DIR/report.md``), whose main table is printed at the end.

The protocol trains two runs at once (``jobs``, ``DEMO_JOBS``), each in its own single-threaded process:
the two cores of the machine it is sized for (``vldistill.protocol_jobs``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vldistill.config import PRESETS_DIR, _format_validation, cache_dir
from vldistill.console import make_console
from vldistill.errors import ConfigError

CLIP_PLACEHOLDER = "@demo-clip"
DEMO_JOBS = 2
console = make_console(stderr=True)


def _substitute(tree: Any, old: str, new: str) -> Any:
    if isinstance(tree, dict):
        return {k: _substitute(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_substitute(v, old, new) for v in tree]
    return new if tree == old else tree


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    spec_path: Path | None = None,
    progress: bool = False,
    jobs: int = DEMO_JOBS,
    seeds: list[int] | None = None,
    world_seed: int | None = None,
) -> Path:
    """Run the demo into ``out`` (rerun to continue an interrupted one); returns the report path.

    ``jobs``: protocol runs trained at once, each in its own process (1: one after another, here).
    ``seeds`` replaces the protocol's training seeds; ``world_seed`` draws another world (and trains
    the demo CLIP on it): checks of the demo's effects on draws its defaults did not use.
    """
    import torch

    from vldistill.data.world import generate_world
    from vldistill.demo_teachers import ensure_demo_clip
    from vldistill.experiment import world_dir
    from vldistill.protocol import ProtocolConfig, run_protocol
    from vldistill.report import summary_table, write_report

    t0 = time.perf_counter()
    # One intra-op thread: these models are small, and on a busy 2-core machine two OpenMP threads
    # spin-wait on each other (measured here: steps up to 20x slower under load).
    torch.set_num_threads(1)
    spec_path = spec_path or PRESETS_DIR / ("demo-quick.yaml" if quick else "demo.yaml")
    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    clip_settings = dict(raw.pop("demo_clip", {}) or {})
    if clip_settings.pop("hard_negatives", False):
        # Swapped-word hard negatives over the world's attribute words (demo_teachers.pretrain_clip).
        from vldistill.data.world.scene import COLOURS, SHAPES

        clip_settings["negative_words"] = [list(COLOURS), list(SHAPES)]
    if seeds:
        raw["seeds"] = list(seeds)
    if world_seed is not None:
        raw["base"]["data"]["world_seed"] = int(world_seed)
    scale = float(raw["base"]["data"].get("world_scale", 1.0))
    wseed = int(raw["base"]["data"].get("world_seed", 0))
    world = world_dir(scale, wseed)
    console.print(f"[1/4] generated world (scale {scale:g}, seed {wseed}) at {world}")
    generate_world(world, style="both", seed=wseed, scale=scale)
    console.print("[2/4] teachers: small CLIP pre-trained on the world's captions; EfficientNet-Lite0; MiniLM")
    clip_dir = ensure_demo_clip(world, cache_dir() / "demo-teachers", progress=progress, **clip_settings)
    stats_file = clip_dir / "demo_clip.json"
    try:
        spec = ProtocolConfig.model_validate(_substitute(raw, CLIP_PLACEHOLDER, str(clip_dir)))
    except ValidationError as err:
        raise ConfigError(_format_validation(err, str(spec_path))) from None
    console.print(
        f"[3/4] protocol: {', '.join(spec.tasks)} x {len(spec.conditions)} conditions (+ shift) x "
        f"{len(spec.methods)} methods x {len(spec.seeds)} seeds -> {out}"
    )
    run_protocol(spec, out, show_progress=progress, jobs=jobs)
    console.print("[4/4] report")
    teacher_stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    (out / "teachers.json").write_text(json.dumps({"demo_clip": teacher_stats}, indent=1))
    report = write_report(out)
    seconds = round(time.perf_counter() - t0, 1)
    (out / "demo.json").write_text(
        json.dumps(
            {
                "seconds_this_invocation": seconds,
                "quick": quick,
                "spec": str(spec_path),
                "seeds": list(spec.seeds),
                "world_seed": wseed,
                "demo_clip": teacher_stats,
            },
            indent=1,
        )
    )
    make_console().print(summary_table(out))
    console.print(f"report: {report} ({seconds} s)")
    return report
