"""``vldistill train``, ``vldistill plan`` and ``vldistill eval``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vldistill.console import make_console
from vldistill.errors import ConfigError

if TYPE_CHECKING:
    from vldistill.config import ExperimentConfig

console = make_console()

ConfigArg = Annotated[Path | None, typer.Argument(help="experiment YAML (or use --preset)")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="a preset shipped in configs/, e.g. smoke")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a key: --set train.epochs=1")]
ResumeOpt = Annotated[bool, typer.Option(help="continue from the last whole checkpoint in --out")]
OverwriteOpt = Annotated[
    bool, typer.Option(help="replace the run already in --out (its checkpoints, events and metrics)")
]


def resolve_config(config: Path | None, preset: str | None, overrides: list[str] | None) -> ExperimentConfig:
    from vldistill.config import load_config, preset_path

    if (config is None) == (preset is None):
        raise ConfigError("give a config file or --preset NAME (exactly one); fix: e.g. --preset smoke")
    return load_config(config if config is not None else preset_path(preset or ""), overrides)


def train_command(
    config: ConfigArg = None,
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/train"),
    preset: PresetOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Fine-tune a student with a distillation method, evaluate, checkpoint.

    The run folder keeps the resolved config (config.yaml); Ctrl-C or SIGTERM saves a checkpoint and
    exits with 130 / 143; --resume continues it.
    """
    from vldistill.training.train import train

    cfg = resolve_config(config, preset, set_)
    summary = train(cfg, out, resume=resume, overwrite=overwrite, show_progress=progress)
    if summary:
        metric = summary["primary_metric"]
        if "dev" in summary:
            console.print(f"dev: {metric} = {summary['dev'][metric]} (step {summary['best_step']}, selected)")
        for split, values in summary["eval"].items():
            console.print(f"{split}: {metric} = {values[metric]}")
        console.print(f"final student: {out / 'final'}")


def plan_command(
    config: ConfigArg = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    cost: Annotated[
        bool, typer.Option("--cost", help="instead: time steps here, size the teacher cache, say live or cache")
    ] = False,
    steps: Annotated[int, typer.Option(min=1, help="with --cost: timed steps per case")] = 3,
) -> None:
    """Dry run: build everything, run one batch, print which teacher output feeds which student output.

    With --cost: parameters, time per step and peak memory with live teachers and with the teacher
    cache (measured on this machine), the cache's size for the whole training split, and which to use.
    """
    cfg = resolve_config(config, preset, set_)
    if cost:
        from vldistill.training.cost import make_cost_plan, render_cost_plan

        render_cost_plan(make_cost_plan(cfg, steps=steps), console)
        return
    from vldistill.training.plan import make_plan, render_plan

    render_plan(make_plan(cfg), console)


def resolve_eval_inputs(
    student: Path, config: Path | None, preset: str | None, overrides: list[str] | None
) -> tuple[ExperimentConfig, Path]:
    """The config and the student folder of ``vldistill eval STUDENT [CONFIG]``.

    ``STUDENT`` is a student folder (then a config or preset is needed) or a run folder written by
    ``vldistill train``: its ``final/`` student, and its ``config.yaml`` unless a config is given.
    """
    from vldistill.config import load_config
    from vldistill.training.run_folder import CONFIG_FILE

    if (student / CONFIG_FILE).is_file() and not (student / "final").is_dir():
        raise ConfigError(
            f"{student}: this run has no final/ student yet; fix: finish it (vldistill train ... --out "
            f"{student} --resume) or give a student folder"
        )
    run_dir = student if (student / "final").is_dir() else None
    if run_dir is not None:
        student = run_dir / "final"
    if config is None and preset is None:
        if run_dir is None or not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(
                f"{student}: no config given and no run folder with a {CONFIG_FILE} around it; fix: give the "
                "experiment config (vldistill eval STUDENT CONFIG) or the run folder vldistill train wrote"
            )
        return load_config(run_dir / CONFIG_FILE, overrides), student
    return resolve_config(config, preset, overrides), student


def eval_command(
    student: Annotated[
        Path, typer.Argument(help="a run folder (RUN: its final/ and config.yaml), or a student folder and a config")
    ],
    config: ConfigArg = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option(help="folder for predictions and scores")] = Path("runs/eval"),
) -> None:
    """Evaluate a saved student on the config's evaluation splits; write predictions for `vldistill score`.

    scores.json holds, per split, the metrics of the training run's summary: the primary metric, its
    breakdowns, and the image-shuffle control of each split (``<split>:shuffled``).
    """
    import json

    from vldistill.data.loader import CachingProcessor
    from vldistill.models.processing import Processor
    from vldistill.models.students import load_student
    from vldistill.training.evaluate import PRIMARY_METRIC, SHUFFLED, Evaluator, image_shuffled, write_predictions
    from vldistill.training.experiment import EvalSet, load_data

    cfg, student = resolve_eval_inputs(student, config, preset, set_)
    data = load_data(cfg.data)
    model = load_student(student, task=data.task, max_text_len=cfg.student.max_text_len)
    processor = Processor.from_pretrained(student, max_length=cfg.student.max_text_len)
    # A VQA student answers from its own vocabulary (id2label), whatever this data's training split holds.
    answers = [model.config.id2label[i] for i in range(model.config.num_labels)] if data.task == "vqa" else None
    evaluate = Evaluator(data.task, CachingProcessor(processor), answers, cfg.train.eval_batch_size)
    results = {}
    for name, es in data.evals.items():
        results[name], preds = evaluate.split(model, es)
        suffix = "json" if data.task == "vqa" else "jsonl"
        path = write_predictions(data.task, es.examples, preds, out / f"predictions-{name}.{suffix}", answers)
        metric = PRIMARY_METRIC[data.task]
        console.print(f"{name}: {metric} = {results[name][metric]} -> {path}")
        shuffled = image_shuffled(es.examples)
        if shuffled is not None:
            results[name + SHUFFLED] = evaluate.split(model, EvalSet(name + SHUFFLED, shuffled, es.records))[0]
            console.print(f"{name + SHUFFLED}: {metric} = {results[name + SHUFFLED][metric]} (images shuffled)")
    (out / "scores.json").write_text(json.dumps(results, indent=1))
