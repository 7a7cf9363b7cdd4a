"""Predictions of a student on an evaluation set, scored with the official metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from vldistill.data.examples import TaskExample
from vldistill.data.loader import Batch
from vldistill.data.records import VE_LABELS, Record, VQARecord
from vldistill.metrics import nlvr2_scores, snli_ve_accuracy, vcr_accuracy
from vldistill.metrics.vqa import question_accuracy, round2

PRIMARY_METRIC: dict[str, str] = {"vqa": "vqa_accuracy", "snli_ve": "accuracy", "vcr": "q2ar", "nlvr2": "accuracy"}
"""The figure each task's papers report first, used for tables and model selection."""


@torch.no_grad()
def predict(student: nn.Module, batches: Iterable[Batch], device: torch.device | str) -> dict[str, int]:
    """uid -> predicted class / answer / candidate index (argmax of the logits)."""
    was_training = student.training
    student.eval()
    preds: dict[str, int] = {}
    for batch in batches:
        logits = student(batch.student.to(device)).logits
        for ex, p in zip(batch.examples, logits.argmax(dim=1).tolist(), strict=True):
            preds[ex.uid] = p
    student.train(was_training)
    return preds


def score(
    task: str,
    examples: Sequence[TaskExample],
    records: Mapping[str, Record],
    preds: Mapping[str, int],
    answers: Sequence[str] | None = None,
) -> dict[str, float]:
    """Official metrics in percent, rounded to 2 decimals as the official tools report them.

    ``records`` maps the record id (``TaskExample.meta["record"]``) to its record (VQA needs the raw
    annotator answers: the official metric processes them itself).
    """
    if task == "vqa":
        assert answers is not None
        accs = []
        for ex in examples:
            rec = records[ex.meta["record"]]
            assert isinstance(rec, VQARecord)
            gt = [{"answer": a.answer, "answer_id": a.answer_id} for a in rec.answers]
            accs.append(question_accuracy(answers[preds[ex.uid]], gt))
        return {"vqa_accuracy": round2(100 * sum(accs) / len(accs))}
    if task == "snli_ve":
        gold = {ex.uid: VE_LABELS[ex.label] for ex in examples}
        out = snli_ve_accuracy(gold, {ex.uid: VE_LABELS[preds[ex.uid]] for ex in examples})
    elif task == "vcr":
        gold_pairs: dict[str, list[int]] = {}
        pred_pairs: dict[str, list[int]] = {}
        for ex in examples:
            slot = 0 if ex.meta["stage"] == "qa" else 1
            gold_pairs.setdefault(ex.meta["record"], [-1, -1])[slot] = ex.label
            pred_pairs.setdefault(ex.meta["record"], [-1, -1])[slot] = preds[ex.uid]
        out = vcr_accuracy(
            {k: (v[0], v[1]) for k, v in gold_pairs.items()}, {k: (v[0], v[1]) for k, v in pred_pairs.items()}
        )
    else:
        out = nlvr2_scores(
            {ex.uid: bool(ex.label) for ex in examples}, {ex.uid: bool(preds[ex.uid]) for ex in examples}
        )
    return {k: round(v, 2) for k, v in out.items()}
