"""SNLI-VE in its official layout: ``snli_ve_<split>.jsonl`` and ``flickr30k_images/<id>.jpg``.

Each image gets a caption (``sentence1``, the premise SNLI-VE replaced by the image) and three
hypotheses, one per label, so labels are exactly balanced: entailment (a true statement),
contradiction (a false one: wrong colour, count, shape, place or size) and neutral (something the
picture cannot decide: what a shape is made of, when the picture was taken).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from vldistill.data.world.files import scaled, task_rng, write_jsonl
from vldistill.data.world.language import caption, neutral_statement, statement
from vldistill.data.world.render import STYLES, render, save_jpeg
from vldistill.data.world.scene import sample_scene

SPLITS: dict[str, int] = {"train": 400, "dev": 100, "test": 100}  # images at scale 1; 3 hypotheses each
FLICKR_ID_OFFSET: dict[str, int] = {"train": 1_000_000_000, "dev": 2_000_000_000, "test": 3_000_000_000}
_LABEL_CODES = {"entailment": "e", "neutral": "n", "contradiction": "c"}


def _tokens(sentence: str) -> list[str]:
    return re.findall(r"[\w']+|[^\w\s]", sentence)


def _binary_parse(sentence: str) -> str:
    """A flat stand-in for the Stanford binary parse (``( A ( red circle ) )`` in the real files)."""
    return "( " + " ".join(_tokens(sentence)) + " )"


def _parse(sentence: str) -> str:
    """A flat stand-in for the Stanford constituency parse."""
    return "(ROOT (S " + " ".join(f"(X {t})" for t in _tokens(sentence)) + "))"


def _annotator_labels(gold: str, split: str, rng: np.random.Generator) -> list[str]:
    """One label in train; five in dev and test, as in SNLI, with the gold label the majority."""
    if split == "train":
        return [gold]
    others = [label for label in _LABEL_CODES if label != gold]
    labels = [gold] * 3 + [gold if rng.random() < 0.7 else others[int(rng.integers(2))] for _ in range(2)]
    return [labels[int(i)] for i in rng.permutation(5)]


def write_snli_ve(root: Path, style: str, seed: int, scale: float) -> dict[str, int]:
    """Write ``root/snli_ve`` for one style; returns example counts per split."""
    counts = {}
    background = "photo" if STYLES[style].photo_background else "plain"
    image_dir = root / "snli_ve" / "flickr30k_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for split, default_images in SPLITS.items():
        rng = task_rng(seed, style, "snli_ve", split)
        rows: list[dict[str, Any]] = []
        for n in range(scaled(default_images, scale)):
            flickr_id = str(FLICKR_ID_OFFSET[split] + n)
            scene = sample_scene(rng, rotate=STYLES[style].rotate)
            save_jpeg(render(scene, STYLES[style], rng), str(image_dir / f"{flickr_id}.jpg"))
            premise = caption(scene, rng, background)
            caption_id = f"{flickr_id}.jpg#{int(rng.integers(5))}"
            hypotheses = {
                "entailment": statement(scene, rng, truth=True),
                "contradiction": statement(scene, rng, truth=False),
                "neutral": neutral_statement(scene, rng),
            }
            for k in rng.permutation(3):
                gold = list(hypotheses)[int(k)]
                hypothesis = hypotheses[gold]
                rows.append(
                    {
                        "Flickr30K_ID": flickr_id,
                        "annotator_labels": _annotator_labels(gold, split, rng),
                        "captionID": caption_id,
                        "gold_label": gold,
                        "pairID": f"{caption_id}r1{_LABEL_CODES[gold]}",
                        "sentence1": premise,
                        "sentence1_binary_parse": _binary_parse(premise),
                        "sentence1_parse": _parse(premise),
                        "sentence2": hypothesis,
                        "sentence2_binary_parse": _binary_parse(hypothesis),
                        "sentence2_parse": _parse(hypothesis),
                    }
                )
        counts[split] = write_jsonl(root / "snli_ve" / f"snli_ve_{split}.jsonl", rows)
    return counts
