"""SNLI-VE in its official layout: ``snli_ve_<split>.jsonl`` and ``flickr30k_images/<id>.jpg``.

Each picture is drawn for one hypothesis ``There is a <colour> <shape>.`` (in three phrasings) after
its label (:func:`draw_hypotheses`), so labels are exactly balanced and every hypothesis occurs as
often with each label: the hypothesis alone says nothing about its label. Every picture holds one
*covered* shape (a grey box framed in its colour, the kind hidden) besides one or two visible ones:

- entailment: a visible shape of that colour and kind;
- neutral: none is visible, but the covered box has that colour: it may hide one (the picture can
  neither confirm nor refute the hypothesis);
- contradiction: none is visible and the covered box has another colour.

Visible near misses (the colour on another kind, the kind in another colour; :data:`NEAR_MISS_RATE`)
are frequent, so neither word alone decides. ``sentence1`` (the caption SNLI-VE replaced by the
image) is a true caption of the picture, box included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from vldistill.data.world.captions import describe_scene
from vldistill.data.world.files import Deck, scaled, task_rng, write_jsonl
from vldistill.data.world.language import choose
from vldistill.data.world.render import STYLES, render, save_jpeg
from vldistill.data.world.scene import COLOURS, MAX_SHAPES, SHAPES, Scene, near_miss, place, random_spec

SPLITS: dict[str, int] = {"train": 6000, "dev": 750, "test": 1500}  # hypotheses (= images) at scale 1
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


HYPOTHESIS_FORMS: tuple[str, ...] = (
    "There is a {c} {k}.",
    "A {c} {k} is in the picture.",
    "The image shows a {c} {k}.",
)
LABELS: tuple[str, ...] = tuple(_LABEL_CODES)
NEAR_MISS_RATE = 0.7
"""How often each visible shape of a neutral or contradiction picture is a near miss (the hypothesis's
colour on another kind, or its kind in another colour); the rest are random shapes other than a C S."""


def scene_for(gold: str, kind: str, colour: str, rotate: bool, rng: np.random.Generator) -> Scene:
    """A picture with one or two visible shapes and a covered box on which "there is a ``colour``
    ``kind``" has label ``gold`` (see the module docstring)."""
    n_visible = int(rng.integers(1, MAX_SHAPES))
    if gold == "entailment":
        visible = [(kind, colour, None)] + [random_spec(rng) for _ in range(n_visible - 1)]
        box_colour = choose(rng, COLOURS)
    else:
        visible = [
            near_miss(rng, kind, colour) if rng.random() < NEAR_MISS_RATE else random_spec(rng, avoid=(kind, colour))
            for _ in range(n_visible)
        ]
        box_colour = colour if gold == "neutral" else choose(rng, [c for c in COLOURS if c != colour])
    visible = [visible[int(i)] for i in rng.permutation(len(visible))]
    return place(rng, visible, rotate=rotate, covered=(choose(rng, SHAPES), box_colour))


def draw_hypotheses(rng: np.random.Generator, rotate: bool, n: int) -> Iterator[tuple[str, str, Scene]]:
    """``n`` (label, hypothesis, scene) triples.

    The label comes from a :class:`Deck` of the three labels and the hypothesis's (form, kind, colour)
    from a deck of its own per label: labels are exactly balanced, and every hypothesis occurs as
    often with each label (to one), so the hypothesis alone says nothing about its label.
    """
    label_deck = Deck(LABELS, rng)
    word_decks = {label: Deck(list(product(HYPOTHESIS_FORMS, SHAPES, COLOURS)), rng) for label in LABELS}
    for _ in range(n):
        gold = label_deck.draw()
        form, kind, colour = word_decks[gold].draw()
        yield gold, form.format(c=colour, k=kind), scene_for(gold, kind, colour, rotate, rng)


def write_snli_ve(root: Path, style: str, seed: int, scale: float) -> dict[str, int]:
    """Write ``root/snli_ve`` for one style; returns example counts per split."""
    counts = {}
    background = "photo" if STYLES[style].photo_background else "plain"
    image_dir = root / "snli_ve" / "flickr30k_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for split, default_examples in SPLITS.items():
        rng = task_rng(seed, style, "snli_ve", split)
        rows: list[dict[str, Any]] = []
        draws = draw_hypotheses(rng, STYLES[style].rotate, scaled(default_examples, scale))
        for n, (gold, hypothesis, scene) in enumerate(draws):
            flickr_id = str(FLICKR_ID_OFFSET[split] + n)
            save_jpeg(render(scene, STYLES[style], rng), str(image_dir / f"{flickr_id}.jpg"))
            premise = describe_scene(scene, rng, background)
            caption_id = f"{flickr_id}.jpg#{int(rng.integers(5))}"
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
