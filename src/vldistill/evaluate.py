"""Predictions of a student on an evaluation set, scored with the official metrics."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from vldistill.data.examples import TaskExample
from vldistill.data.loader import Batch
from vldistill.data.records import VE_LABELS, Record, VQARecord
from vldistill.metrics import nlvr2_scores, snli_ve_accuracy, vcr_accuracy
from vldistill.metrics.vqa import question_accuracy, round2
from vldistill.models.dual import DualEncoderStudent, TowerEncoding

PRIMARY_METRIC: dict[str, str] = {"vqa": "vqa_accuracy", "snli_ve": "accuracy", "vcr": "q2ar", "nlvr2": "accuracy"}
"""The figure each task's papers report first, used for tables and model selection."""


def _concat(encodings: Sequence[TowerEncoding]) -> TowerEncoding:
    def cat(name: str) -> torch.Tensor | None:
        parts = [getattr(e, name) for e in encodings]
        return None if parts[0] is None else torch.cat(parts)

    return TowerEncoding(cat("tokens"), cat("pooled"), cat("mask"), cat("query"), cat("key"), encodings[0].grid)


@torch.no_grad()
def predict(
    student: nn.Module, batches: Iterable[Batch], device: torch.device | str, *, reuse_image_encodings: bool = True
) -> dict[str, int]:
    """uid -> predicted class / answer / candidate index (argmax of the logits).

    A dual encoder encodes each distinct image once and reuses it for every question on it, as it
    would be deployed (DiDE's point: VQA has several questions per image); a fusion encoder must
    run image and text together for every question.
    """
    was_training = student.training
    student.eval()
    dual = reuse_image_encodings and isinstance(student, DualEncoderStudent)
    image_cache: dict[object, TowerEncoding] = {}
    preds: dict[str, int] = {}
    for batch in batches:
        inputs = batch.student.to(device)
        if dual:
            paths = [p for ex in batch.examples for p in ex.images]
            missing = [i for i, p in enumerate(paths) if p not in image_cache]
            if missing:
                fresh = student.encode_images(inputs.pixel_values[missing])
                for j, i in enumerate(missing):
                    image_cache[paths[i]] = fresh.select([j])
            images = _concat([image_cache[p] for p in paths])
            texts = student.encode_texts(inputs.input_ids, inputs.attention_mask)
            logits = student.forward_encoded(images, texts, inputs).logits
        else:
            logits = student(inputs).logits
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


def write_predictions(
    task: str,
    examples: Sequence[TaskExample],
    preds: Mapping[str, int],
    path: Path,
    answers: Sequence[str] | None = None,
) -> Path:
    """Write predictions in the format ``vldistill score`` reads (for VQA: the official results format).

    VQA: a JSON list of ``{"question_id": int, "answer": str}``; SNLI-VE, NLVR2: JSON Lines of
    ``{"id", "prediction"}`` (a label); VCR: ``{"id": annot_id, "prediction": {"answer", "rationale"}}``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if task == "vqa":
        assert answers is not None
        rows: list[dict] = [{"question_id": int(ex.uid), "answer": answers[preds[ex.uid]]} for ex in examples]
        path.write_text(json.dumps(rows))
        return path
    if task == "vcr":
        joined: dict[str, dict[str, int]] = {}
        for ex in examples:
            joined.setdefault(ex.meta["record"], {})["answer" if ex.meta["stage"] == "qa" else "rationale"] = preds[
                ex.uid
            ]
        rows = [{"id": rid, "prediction": p} for rid, p in joined.items()]
    elif task == "snli_ve":
        rows = [{"id": ex.uid, "prediction": VE_LABELS[preds[ex.uid]]} for ex in examples]
    else:
        rows = [{"id": ex.uid, "prediction": "True" if preds[ex.uid] else "False"} for ex in examples]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
