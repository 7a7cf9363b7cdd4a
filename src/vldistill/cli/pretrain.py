"""``vldistill pretrain``: DiDE's pre-training-stage distillation on image-caption pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vldistill.cli.train import OverwriteOpt, ResumeOpt
from vldistill.console import make_console
from vldistill.errors import ConfigError

console = make_console()


def pretrain_command(
    config: Annotated[Path | None, typer.Argument(help="pre-training YAML (or use --preset)")] = None,
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/pretrain"),
    preset: Annotated[str | None, typer.Option("--preset", help="a preset in configs/")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set train.epochs=1")] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Distil a fusion teacher's attention and matching scores into a dual encoder, before fine-tuning.

    The run folder works as vldistill train's: config.yaml, checkpoints, --resume, --overwrite, Ctrl-C.
    """
    from vldistill.config import preset_path
    from vldistill.distill.pretrain import load_pretrain_config, pretrain_dual

    if (config is None) == (preset is None):
        raise ConfigError("give a config file or --preset NAME (exactly one); fix: e.g. --preset dide-pretrain-demo")
    cfg = load_pretrain_config(config if config is not None else preset_path(preset or "", ("pretrain",)), set_)
    summary = pretrain_dual(cfg, out, resume=resume, overwrite=overwrite, show_progress=progress)
    if summary:
        last = summary["last_epoch"]
        console.print(
            f"{summary['steps']} steps on {summary['pairs']} pairs; last epoch loss {last['loss']:.4f}, "
            f"rank agreement with the teacher {last['rank_agreement']:.3f}"
        )
        console.print(f"pre-trained student: {summary['final']} (fine-tune with student.pretrained)")
