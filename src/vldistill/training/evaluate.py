"""Predictions of a student on an evaluation set, scored with the official metrics, with breakdowns and controls.

Every split's scores hold the task's primary metric (:data:`PRIMARY_METRIC`) and its breakdowns, named
``<primary>/<group>/<value>``: VQA ``vqa_accuracy/answer_type/<type>`` and
``vqa_accuracy/question_type/<type>`` (the official evaluation's ``perAnswerType`` /
``perQuestionType``), SNLI-VE ``accuracy/class/<label>``, NLVR2 ``accuracy/label/<True|False>`` (and
its ``consistency``); VCR has ``q2a``, ``qa2r`` and ``q2ar``. :class:`Evaluator` adds the image-shuffle
control of each split, ``<split>:shuffled`` (:func:`image_shuffled`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vldistill.data.examples import TaskExample
from vldistill.data.loader import Batch, ExampleDataset, ImageStore, collate_fn
from vldistill.data.records import VE_LABELS, Record, VQARecord
from vldistill.metrics import nlvr2_scores, snli_ve_accuracy, vcr_accuracy
from vldistill.metrics.vqa import accuracy_by_type, question_accuracy
from vldistill.models.dual import DualEncoderStudent, TowerEncoding
from vldistill.models.outputs import ModelInputs
from vldistill.training.experiment import EvalSet

PRIMARY_METRIC: dict[str, str] = {"vqa": "vqa_accuracy", "snli_ve": "accuracy", "vcr": "q2ar", "nlvr2": "accuracy"}
"""The figure each task's papers report first, used for tables and model selection."""
SHUFFLED = ":shuffled"
"""Suffix of a split's image-shuffle control: ``eval:shuffled``, ``shifted:shuffled``."""
SHUFFLE_SEED = "vldistill/image-shuffle"
"""The seed of :func:`image_shuffled`'s derangement: fixed, so every run is controlled on the same pairs."""


def _concat(encodings: Sequence[TowerEncoding]) -> TowerEncoding:
    def cat(name: str) -> torch.Tensor | None:
        parts = [getattr(e, name) for e in encodings]
        return None if parts[0] is None else torch.cat(parts)

    return TowerEncoding(cat("tokens"), cat("pooled"), cat("mask"), cat("query"), cat("key"), encodings[0].grid)


@torch.no_grad()
def predict(
    student: nn.Module,
    batches: Iterable[Batch],
    device: torch.device | str,
    *,
    reuse_image_encodings: bool = True,
    timing: dict[str, float] | None = None,
) -> dict[str, int]:
    """uid -> predicted class / answer / candidate index (argmax of the logits).

    A dual encoder encodes each distinct image once and reuses it for every question on it, as it
    would be deployed (DiDE's point: VQA has several questions per image, and images can be encoded
    ahead of the questions); a fusion encoder must run image and text together for every question.
    ``timing``, if given, gets ``"image_encoding"``: seconds spent in the dual encoder's image tower.
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
                start = time.perf_counter()
                fresh = student.encode_images(inputs.pixel_values[missing])
                if timing is not None:
                    timing["image_encoding"] = timing.get("image_encoding", 0.0) + time.perf_counter() - start
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
    """Official metrics and their breakdowns (module docstring), in percent, rounded to 2 decimals as the official
    tools report them.

    ``records`` maps the record id (``TaskExample.meta["record"]``) to its record (VQA needs the raw
    annotator answers and the question and answer types: the official metric processes them itself).
    Breakdown groups are in sorted order; a group absent from the examples is left out.
    """
    if task == "vqa":
        assert answers is not None
        accs, types = [], []
        for ex in examples:
            rec = records[ex.meta["record"]]
            assert isinstance(rec, VQARecord)
            gt = [{"answer": a.answer, "answer_id": a.answer_id} for a in rec.answers]
            accs.append(question_accuracy(answers[preds[ex.uid]], gt))
            types.append((rec.question_type, rec.answer_type))
        summary = accuracy_by_type(accs, types)
        # A layout without types (ViLT's Arrow files) gives the group "": no breakdown, rather than a nameless one.
        return {
            "vqa_accuracy": summary["overall"],
            **{f"vqa_accuracy/answer_type/{t}": v for t, v in sorted(summary["perAnswerType"].items()) if t},
            **{f"vqa_accuracy/question_type/{t}": v for t, v in sorted(summary["perQuestionType"].items()) if t},
        }
    if task == "snli_ve":
        gold = {ex.uid: VE_LABELS[ex.label] for ex in examples}
        accuracies = snli_ve_accuracy(gold, {ex.uid: VE_LABELS[preds[ex.uid]] for ex in examples})
        per_class = {c: accuracies.get(f"accuracy_{c}") for c in sorted(VE_LABELS)}
        out = {"accuracy": accuracies["accuracy"]}
        out.update({f"accuracy/class/{c}": v for c, v in per_class.items() if v is not None})
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
        gold_labels = {ex.uid: bool(ex.label) for ex in examples}
        out = nlvr2_scores(gold_labels, {ex.uid: bool(preds[ex.uid]) for ex in examples})
        for label in (False, True):
            ids = [uid for uid, gold in gold_labels.items() if gold is label]
            if ids:
                out[f"accuracy/label/{label}"] = 100 * sum(bool(preds[uid]) is label for uid in ids) / len(ids)
    return {k: round(v, 2) for k, v in out.items()}


def image_shuffled(examples: Sequence[TaskExample]) -> list[TaskExample] | None:
    """The image-shuffle control: ``examples`` with each one's image(s) replaced by another example's.

    A fixed derangement of the set's distinct pictures (an NLVR2 pair moves as one; VCR's two examples
    of a record share theirs): the pictures, sorted by path, are shuffled with :data:`SHUFFLE_SEED` into
    a cycle and each is replaced by the next, so no example keeps its own picture, every question about
    one picture gets the same other picture, and every run of a protocol is controlled on the same
    pairs. Texts, labels and ids stay. ``None`` for a set with fewer than two distinct pictures.
    """
    pictures = sorted({ex.images for ex in examples}, key=lambda images: [str(p) for p in images])
    if len(pictures) < 2:
        return None
    random.Random(SHUFFLE_SEED).shuffle(pictures)
    successor = {picture: pictures[(i + 1) % len(pictures)] for i, picture in enumerate(pictures)}
    return [dataclasses.replace(ex, images=successor[ex.images]) for ex in examples]


@dataclass
class Evaluator:
    """How a run evaluates a student: one processor (a :class:`~vldistill.data.loader.CachingProcessor`, so
    every pass reuses the resized images and tokenized texts), one image store, one batch size.

    ``answers``: the VQA answer vocabulary (the student's classes), ``None`` for other tasks.
    """

    task: str
    processor: Callable[[Sequence[TaskExample], Sequence[Sequence]], ModelInputs]
    answers: Sequence[str] | None
    batch_size: int
    device: torch.device | str = "cpu"
    store: ImageStore = field(default_factory=ImageStore)

    def predict(
        self, student: nn.Module, examples: Sequence[TaskExample], timing: dict[str, float] | None = None
    ) -> dict[str, int]:
        """uid -> prediction of ``student`` on ``examples`` (:func:`predict`, which fills ``timing``)."""
        # Its own generator: evaluating must not draw from the training run's random stream.
        loader = torch.utils.data.DataLoader(
            ExampleDataset(examples, self.store),
            batch_size=self.batch_size,
            collate_fn=collate_fn(self.processor, self.task, self.answers),
            generator=torch.Generator(),
        )
        return predict(student, loader, self.device, timing=timing)

    def split(self, student: nn.Module, es: EvalSet) -> tuple[dict[str, float], dict[str, int]]:
        """``(scores, predictions)`` on one set.

        The scores add two timings in milliseconds per example: ``ms_per_example``, the whole
        prediction, and ``deploy_ms_per_example``, the same without the dual encoder's image tower
        (its images encoded ahead, as DiDE is deployed; equal for a fusion student, which cannot).
        """
        timing: dict[str, float] = {}
        start = time.perf_counter()
        preds = self.predict(student, es.examples, timing)
        elapsed = time.perf_counter() - start
        scores = score(self.task, es.examples, es.records, preds, self.answers)
        n = max(len(es.examples), 1)
        scores["ms_per_example"] = round(1000 * elapsed / n, 3)
        scores["deploy_ms_per_example"] = round(1000 * (elapsed - timing.get("image_encoding", 0.0)) / n, 3)
        return scores, preds

    def __call__(
        self, student: nn.Module, sets: Mapping[str, EvalSet], *, controls: bool = True
    ) -> dict[str, dict[str, float]]:
        """Scores of ``student`` on each set and, with ``controls``, its image-shuffle control ``<name>:shuffled``."""
        results = {}
        for name, es in sets.items():
            results[name] = self.split(student, es)[0]
            shuffled = image_shuffled(es.examples) if controls else None
            if shuffled is not None:
                results[name + SHUFFLED] = self.split(student, EvalSet(name + SHUFFLED, shuffled, es.records))[0]
        return results


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
