"""``vldistill score``: official metrics of a predictions file against a dataset's gold labels.

VQA reads the official results format (a JSON list of ``{"question_id", "answer"}``) and scores it as
the official evaluation does; SNLI-VE, VCR and NLVR2 read a predictions file of
``{"id": ..., "prediction": ...}`` objects (JSON Lines or a JSON list; see
:mod:`vldistill.metrics.files`) against the gold labels the dataset readers load from ROOT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vldistill.console import make_console
from vldistill.metrics.files import check_coverage, gold_labels

app = typer.Typer(help="Score predictions with the official metrics of each task.", no_args_is_help=True)
console = make_console()

Root = Annotated[Path, typer.Argument(help="dataset root: official layout, ViLT Arrow files or datasets (auto)")]
Predictions = Annotated[Path, typer.Option(help='predictions file: {"id": ..., "prediction": ...} per line')]
Out = Annotated[Path | None, typer.Option(help="write the scores here as JSON")]
Subset = Annotated[
    bool,
    typer.Option(
        help="score only the examples that have a prediction (e.g. `vldistill eval` with data.max_eval); "
        "not the split's official score"
    ),
]


def _restrict(gold: dict, ids: set[str], subset: bool) -> tuple[dict, str]:
    """The gold labels to score and what the printed line adds (``on N of M examples`` for a subset)."""
    if not subset:
        return gold, ""
    return {k: v for k, v in gold.items() if k in ids}, f" on {len(ids)} of {len(gold)} examples (--subset)"


def _read_records(task: str, root: Path, split: str) -> list:
    """The records of a split, through the dataset readers (the layout told from the files)."""
    from vldistill.data.readers import read_task

    return read_task(task, root, split)


def _finish(scores: dict, out: Path | None, lines: list[str]) -> None:
    for line in lines:
        console.print(line)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {out}")


@app.command("vqa")
def vqa(
    questions: Annotated[Path, typer.Option(help="official questions JSON")],
    annotations: Annotated[Path, typer.Option(help="official annotations JSON")],
    results: Annotated[Path, typer.Option(help='results JSON: [{"question_id": int, "answer": str}, ...]')],
    out: Out = None,
    subset: Subset = False,
) -> None:
    """VQA accuracy exactly as the official evaluation (overall, per question and answer type)."""
    from vldistill.metrics.vqa import load_and_evaluate

    scores = load_and_evaluate(questions, annotations, results, subset=subset)
    accuracy = scores["accuracy"]
    per_type = ", ".join(f"{name} {value:.2f}" for name, value in accuracy["perAnswerType"].items())
    note = f" on {scores['subset']['scored']} of {scores['subset']['annotated']} questions (--subset)" if subset else ""
    _finish(scores, out, [f"VQA accuracy: {accuracy['overall']:.2f} ({per_type}){note}"])


@app.command("snli_ve")
def snli_ve(
    root: Root,
    predictions: Predictions,
    split: Annotated[str, typer.Option(help="train, dev or test")] = "dev",
    out: Out = None,
    subset: Subset = False,
) -> None:
    """SNLI-VE accuracy (predictions: pairID -> entailment / neutral / contradiction)."""
    from vldistill.metrics.classification import load_snli_ve_predictions, snli_ve_accuracy

    records = _read_records("snli_ve", root, split)
    gold = gold_labels(((r.pair_id, r.gold_label) for r in records), f"{root} ({split})")
    pred = load_snli_ve_predictions(predictions)
    gold, note = _restrict(gold, check_coverage(pred, gold, predictions, subset=subset), subset)
    scores = snli_ve_accuracy(gold, pred)
    _finish(scores, out, [f"SNLI-VE {split} accuracy: {scores['accuracy']:.2f} ({len(gold)} pairs){note}"])


@app.command("vcr")
def vcr(
    root: Root,
    predictions: Predictions,
    split: Annotated[str, typer.Option(help="train or val")] = "val",
    out: Out = None,
    subset: Subset = False,
) -> None:
    """VCR Q->A, QA->R and Q->AR (predictions: annot_id -> {"answer": i, "rationale": j})."""
    from vldistill.metrics.vcr import load_vcr_predictions, vcr_accuracy

    records = _read_records("vcr", root, split)
    pairs = ((r.annot_id, None if r.answer_label is None else (r.answer_label, r.rationale_label)) for r in records)
    gold = gold_labels(pairs, f"{root} ({split})")
    pred = load_vcr_predictions(predictions)
    gold, note = _restrict(gold, check_coverage(pred, gold, predictions, subset=subset), subset)
    scores = vcr_accuracy(gold, pred)
    line = f"VCR {split}: Q->A {scores['q2a']:.2f}, QA->R {scores['qa2r']:.2f}, Q->AR {scores['q2ar']:.2f}{note}"
    _finish(scores, out, [line])


@app.command("nlvr2")
def nlvr2(
    root: Root,
    predictions: Predictions,
    split: Annotated[str, typer.Option(help="train, dev, test1")] = "dev",
    out: Out = None,
    subset: Subset = False,
) -> None:
    """NLVR2 accuracy and consistency (predictions: identifier -> "True" / "False")."""
    from vldistill.metrics.nlvr2 import load_nlvr2_predictions, nlvr2_scores

    records = _read_records("nlvr2", root, split)
    gold = gold_labels(((r.identifier, r.label) for r in records), f"{root} ({split})")
    pred = load_nlvr2_predictions(predictions)
    gold, note = _restrict(gold, check_coverage(pred, gold, predictions, subset=subset), subset)
    scores = nlvr2_scores(gold, pred)
    line = f"NLVR2 {split}: accuracy {scores['accuracy']:.2f}, consistency {scores['consistency']:.2f}{note}"
    _finish(scores, out, [line])
