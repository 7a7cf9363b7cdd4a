"""``vldistill train`` and ``vldistill plan``."""

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


def resolve_config(config: Path | None, preset: str | None, overrides: list[str] | None) -> ExperimentConfig:
    from vldistill.config import load_config, preset_path

    if (config is None) == (preset is None):
        raise ConfigError("give a config file or --preset NAME (exactly one); fix: e.g. --preset smoke")
    return load_config(config if config is not None else preset_path(preset or ""), overrides)


def train_command(
    config: ConfigArg = None,
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/train"),
    preset: PresetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue from the last whole checkpoint in --out")] = False,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Fine-tune a student with a distillation method, evaluate, checkpoint."""
    from vldistill.train import train

    cfg = resolve_config(config, preset, set_)
    summary = train(cfg, out, resume=resume, show_progress=progress)
    if summary:
        metric = summary["primary_metric"]
        for split, values in summary["eval"].items():
            console.print(f"{split}: {metric} = {values[metric]}")
        console.print(f"final student: {out / 'final'}")


def plan_command(
    config: ConfigArg = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
) -> None:
    """Dry run: build everything, run one batch, print which teacher output feeds which student output."""
    from vldistill.plan import make_plan, render_plan

    cfg = resolve_config(config, preset, set_)
    render_plan(make_plan(cfg), console)


def eval_command(
    student: Annotated[Path, typer.Argument(help="a student folder written by vldistill (e.g. RUN/final)")],
    config: ConfigArg = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option(help="folder for predictions and scores")] = Path("runs/eval"),
) -> None:
    """Evaluate a saved student on the config's evaluation splits; write predictions for `vldistill score`."""
    import json

    import torch

    from vldistill.data.loader import ExampleDataset, collate_fn
    from vldistill.evaluate import predict, score, write_predictions
    from vldistill.experiment import load_data
    from vldistill.models.processing import Processor
    from vldistill.models.students import load_student

    cfg = resolve_config(config, preset, set_)
    data = load_data(cfg.data)
    model = load_student(student)
    processor = Processor.from_pretrained(student, max_length=cfg.student.max_text_len)
    # A VQA student answers from its own vocabulary (id2label), whatever this data's training split holds.
    answers = [model.config.id2label[i] for i in range(model.config.num_labels)] if data.task == "vqa" else None
    results = {}
    for name, es in data.evals.items():
        loader = torch.utils.data.DataLoader(
            ExampleDataset(es.examples),
            batch_size=cfg.train.eval_batch_size,
            collate_fn=collate_fn(processor, data.task, answers),
        )
        preds = predict(model, loader, "cpu")
        suffix = "json" if data.task == "vqa" else "jsonl"
        path = write_predictions(data.task, es.examples, preds, out / f"predictions-{name}.{suffix}", answers)
        results[name] = score(data.task, es.examples, es.records, preds, answers)
        console.print(f"{name}: {results[name]} -> {path}")
    (out / "scores.json").write_text(json.dumps(results, indent=1))
