"""``vldistill protocol``, ``vldistill report`` and ``vldistill cache build``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vldistill.cli.train import ConfigArg, PresetOpt, SetOpt, resolve_config
from vldistill.console import make_console
from vldistill.errors import ConfigError

console = make_console()
cache_app = typer.Typer(help="The teacher-output cache.", no_args_is_help=True)


def protocol_command(
    config: Annotated[Path, typer.Argument(help="protocol YAML (see configs/protocol-*.yaml)")],
    out: Annotated[Path, typer.Option(help="protocol folder; rerun to continue an interrupted protocol")],
    progress: Annotated[bool, typer.Option(help="progress bars of each run (with --jobs 1)")] = False,
    jobs: Annotated[
        int | None,
        typer.Option(min=1, help="runs trained at once, each in its own process (default: the file's jobs, 1)"),
    ] = None,
) -> None:
    """Run tasks x conditions x methods x seeds; rows go to OUT/results.jsonl; then write the report."""
    from vldistill.protocol.report import summary_table, write_report
    from vldistill.protocol.runner import load_protocol, run_protocol

    results = run_protocol(load_protocol(config), out, show_progress=progress, jobs=jobs)
    report = write_report(out)
    console.print(summary_table(out))
    console.print(f"results: {results}\nreport: {report}")


def demo_command(
    out: Annotated[Path, typer.Option(help="demo folder; rerun to continue an interrupted demo")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="a small, one-seed version (CI, install check)")] = False,
    progress: Annotated[bool, typer.Option(help="progress bars of each run (with --jobs 1)")] = False,
    jobs: Annotated[int, typer.Option(min=1, help="runs trained at once, each single-threaded")] = 2,
    spec: Annotated[
        Path | None,
        typer.Option(help="another protocol in the demo's format (with demo_clip), e.g. configs/demo-ablation.yaml"),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="training seeds instead of the protocol's, comma-separated, e.g. 3,4,5")
    ] = None,
    world_seed: Annotated[
        int | None,
        typer.Option(min=0, max=2**32 - 1, help="draw another world (and train the demo CLIP on it); default 0"),
    ] = None,
    doc: Annotated[
        Path | None, typer.Option(help="also publish the report there with its plots, e.g. docs/demo-report.md")
    ] = None,
) -> None:
    """The embedded default: world, teachers, protocol, DiDE, report (offline, 2 CPU cores)."""
    from vldistill.demo.run import run_demo

    if spec is not None and quick:
        raise ConfigError("--quick and --spec name two protocols; fix: give one of them")
    if spec is not None and not spec.is_file():
        raise ConfigError(f"--spec {spec}: no such file; fix: check the path (e.g. configs/demo-ablation.yaml)")
    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r}: not integers; fix: e.g. --seeds 3,4,5") from None
        if not seed_list:
            raise ConfigError(f"--seeds {seeds!r}: no seed; fix: e.g. --seeds 3,4,5")
        if len(set(seed_list)) != len(seed_list) or any(not 0 <= s < 2**32 for s in seed_list):
            raise ConfigError(f"--seeds {seeds!r}: each seed once, each in 0 .. 4294967295; fix: e.g. --seeds 3,4,5")
    import shlex
    import sys

    command = "vldistill " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_demo(
        out,
        quick=quick,
        progress=progress,
        jobs=jobs,
        spec_path=spec,
        seeds=seed_list,
        world_seed=world_seed,
        doc=doc,
        command=command,
    )


def report_command(run_dir: Annotated[Path, typer.Argument(help="a protocol folder with results.jsonl")]) -> None:
    """Write DIR/report.md (mean ± std per task, condition and method, gains) and PNG plots."""
    from vldistill.protocol.report import summary_table, write_report

    report = write_report(run_dir)
    console.print(summary_table(run_dir))
    console.print(f"report: {report}")


@cache_app.command("build")
def cache_build(config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None) -> None:
    """Pre-compute the teacher outputs a config's method needs over its training set."""
    from accelerate import PartialState

    from vldistill.training.cache import open_teacher_cache
    from vldistill.training.experiment import build_models, load_data

    cfg = resolve_config(config, preset, set_)
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())
    data = load_data(cfg.data)
    built = build_models(cfg, data)
    if not built.method.teachers:
        console.print(f"method '{cfg.method.name}' has no teachers: nothing to cache")
        return
    for teacher in built.method.teachers.values():
        teacher.to(state.device)
    cache = open_teacher_cache(
        cfg, data, built.method, rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone
    )
    if state.is_main_process:
        n = len(data.train)
        found = "all found in the cache" if not cache.computed else f"{cache.computed} computed now"
        held = ", ".join(f"{len(cache.stores[s])} {s}" for s in ("images", "texts", "examples"))
        console.print(
            f"teacher cache {cache.folder}: {n} training examples, {found}; it holds {held} "
            f"in {len(cache.shards)} shards"
        )
