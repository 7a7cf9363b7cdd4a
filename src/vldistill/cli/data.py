"""``vldistill data``: validate official datasets and generate the embedded world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vldistill.console import make_console

app = typer.Typer(
    help="Validate datasets (official layouts, ViLT Arrow files, Hugging Face datasets); generate the embedded world.",
    no_args_is_help=True,
)
console = make_console()


@app.command("check")
def check(
    task: Annotated[str, typer.Argument(help="vqa, snli_ve, vcr or nlvr2")],
    root: Annotated[Path, typer.Argument(help="dataset root: official layout, ViLT Arrow files or datasets")],
    split: Annotated[str, typer.Option(help="split name, e.g. train2014 (vqa), train, dev, val")] = "train",
    show: Annotated[int, typer.Option(help="print at most this many defects, then count the rest", min=1)] = 20,
    data_format: Annotated[
        str, typer.Option("--format", help="auto (from the files), official, vilt_arrow or hf_datasets")
    ] = "auto",
    column: Annotated[
        list[str] | None, typer.Option(help="hf_datasets: FIELD=COLUMN, the column of a field (repeatable)")
    ] = None,
) -> None:
    """Validate a dataset: print its counts, or exit 2 with one line per defect (file, record, fix)."""
    from vldistill.data.check import check_dataset
    from vldistill.data.readers import DataLayout
    from vldistill.errors import ConfigError

    columns: dict[str, str] = {}
    for item in column or []:
        field, sep, name = item.partition("=")
        if not sep or not field or not name:
            raise ConfigError(f"--column {item!r} is not FIELD=COLUMN; fix: write e.g. --column hypothesis=sentence2")
        columns[field] = name
    counts = check_dataset(task, root, split, shown=show, layout=DataLayout(data_format, columns))
    console.print(f"{task} {split} at {root}: ok")
    for name, value in counts.items():
        console.print(f"  {name}: {value}")


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="output folder")],
    style: Annotated[str, typer.Option(help="'base', 'shifted' or 'both'")] = "both",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    scale: Annotated[float, typer.Option(help="multiplies the default number of examples")] = 1.0,
) -> None:
    """Render the generated world and write all four tasks in their official formats."""
    from vldistill.data.world import generate_world

    summary = generate_world(out, style=style, seed=seed, scale=scale)
    for name, value in summary.items():
        console.print(f"  {name}: {value}")
