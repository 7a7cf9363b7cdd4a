"""NLVR2 in its official layout: ``<split>.json`` (a JSON object per line) and PNG image pairs.

One sentence is written per set and judged against two image pairs, one that makes it true and one
that makes it false (real NLVR2 has four pairs per set; two keep the structure that the consistency
metric needs: the same sentence over several pairs). Labels are therefore exactly balanced, and
every sentence is as often true as false. Pictures hold 1-3 shapes, one per quadrant, so counts go
up to three per picture and six per pair.
Identifiers follow ``<split>-<set>-<pair>-<sentence>``; images ``<split>-<set>-<pair>-img0.png``
(left) and ``-img1.png`` (right), under ``images/train/<directory>/`` or ``images/dev/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vldistill.data.world.files import scaled, task_rng, write_jsonl
from vldistill.data.world.language import NUMBER_WORDS, article, choose, plural
from vldistill.data.world.render import STYLES, render
from vldistill.data.world.scene import COLOURS, MAX_SHAPES, SHAPES, Scene, sample_scene

SPLITS: dict[str, int] = {"train": 300, "dev": 100}  # sets at scale 1; two pairs each
SETS_PER_DIRECTORY = 50
MAX_TRIES = 400
MAX_SENTENCES = 50
Predicate = Callable[[Scene, Scene], bool]


def _sentence(rng: np.random.Generator) -> tuple[str, str, Predicate]:
    """A random statement about an image pair: (sentence, synset it is about, truth of a pair)."""
    kind, colour = choose(rng, SHAPES), choose(rng, COLOURS)
    side = choose(rng, ["left", "right"])

    def pick(left: Scene, right: Scene) -> Scene:
        return left if side == "left" else right

    form = int(rng.integers(9))
    if form == 0:
        n = int(rng.integers(1, 4))
        return (
            f"The {side} image contains exactly {NUMBER_WORDS[n]} {plural(kind, n)}.",
            kind,
            lambda a, b: pick(a, b).count(kind=kind) == n,
        )
    if form == 1:
        other = "right" if side == "left" else "left"
        return (
            f"There are more {colour} shapes in the {side} image than in the {other} image.",
            colour,
            lambda a, b: pick(a, b).count(colour=colour) > pick(b, a).count(colour=colour),
        )
    if form == 2:
        return (
            f"Both images contain {article(kind)} {kind}.",
            kind,
            lambda a, b: a.count(kind=kind) > 0 and b.count(kind=kind) > 0,
        )
    if form == 3:
        return (
            f"Exactly one image contains {article(kind)} {kind}.",
            kind,
            lambda a, b: (a.count(kind=kind) > 0) != (b.count(kind=kind) > 0),
        )
    if form == 4:
        n = int(rng.integers(2, 2 * MAX_SHAPES + 1))
        return (
            f"There are {NUMBER_WORDS[n]} shapes in total.",
            "shape",
            lambda a, b: len(a.shapes) + len(b.shapes) == n,
        )
    if form == 5:
        n = int(rng.integers(1, MAX_SHAPES + 1))
        return (
            f"One image contains exactly {NUMBER_WORDS[n]} {plural('shape', n)}.",
            "shape",
            lambda a, b: n in (len(a.shapes), len(b.shapes)),
        )
    if form == 6:
        size = choose(rng, ["small", "large"])
        return (
            f"The {side} image has {article(size)} {size} {colour} shape.",
            colour,
            lambda a, b: pick(a, b).count(colour=colour, size=size) > 0,
        )
    if form == 7:
        return (
            f"Each image contains at least one {colour} shape.",
            colour,
            lambda a, b: a.count(colour=colour) > 0 and b.count(colour=colour) > 0,
        )
    return (
        f"Neither image contains {article(kind)} {kind}.",
        kind,
        lambda a, b: a.count(kind=kind) == 0 and b.count(kind=kind) == 0,
    )


def _pair(predicate: Predicate, truth: bool, rotate: bool, rng: np.random.Generator) -> tuple[Scene, Scene] | None:
    """A (left, right) pair of scenes on which ``predicate`` is ``truth``, or None if none was found."""
    for _ in range(MAX_TRIES):
        left, right = sample_scene(rng, rotate=rotate), sample_scene(rng, rotate=rotate)
        if predicate(left, right) == truth:
            return left, right
    return None


def _sample_set(rng: np.random.Generator, rotate: bool) -> tuple[str, str, list[tuple[bool, tuple[Scene, Scene]]]]:
    """A sentence, its synset, and one pair that makes it true and one that makes it false.

    A sentence whose truth value (almost) never comes up in :data:`MAX_TRIES` random pairs is
    replaced by another; every form can be true and false on scenes of 1-3 shapes, so this is rare.

    Raises:
        RuntimeError: :data:`MAX_SENTENCES` sentences in a row found no pair (a form that cannot be
            both true and false: a bug in :func:`_sentence`).
    """
    for _ in range(MAX_SENTENCES):
        sentence, synset, predicate = _sentence(rng)
        pairs = []
        for truth in (bool(t) for t in rng.permutation([True, False])):
            pair = _pair(predicate, truth, rotate, rng)
            if pair is None:
                break  # a sentence (almost) never true or never false: draw another one
            pairs.append((truth, pair))
        else:
            return sentence, synset, pairs
    raise RuntimeError(f"no NLVR2 sentence of {MAX_SENTENCES} found a true and a false pair")


def write_nlvr2(root: Path, style: str, seed: int, scale: float) -> dict[str, int]:
    """Write ``root/nlvr2`` for one style; returns statement counts per split."""
    counts = {}
    for split, default_sets in SPLITS.items():
        rng = task_rng(seed, style, "nlvr2", split)
        rows: list[dict[str, Any]] = []
        for set_id in range(scaled(default_sets, scale)):
            sentence, synset, pairs = _sample_set(rng, STYLES[style].rotate)
            writer = str(int(rng.integers(1, 120)))
            directory = set_id // SETS_PER_DIRECTORY + 1
            image_dir = root / "nlvr2" / "images" / split / (str(directory) if split == "train" else "")
            image_dir.mkdir(parents=True, exist_ok=True)
            for pair_id, (truth, pair) in enumerate(pairs):
                stem = f"{split}-{set_id}-{pair_id}"
                for side, scene in enumerate(pair):
                    render(scene, STYLES[style], rng).save(image_dir / f"{stem}-img{side}.png", "PNG")
                row: dict[str, Any] = {"identifier": f"{stem}-0", "sentence": sentence, "label": str(truth)}
                if split == "train":
                    row["directory"] = directory
                rows.append(
                    row
                    | {
                        "left_url": f"https://world.vldistill.invalid/{style}/{stem}-img0.png",
                        "right_url": f"https://world.vldistill.invalid/{style}/{stem}-img1.png",
                        "synset": synset,
                        "query": f"{synset}{set_id % 10}",
                        "writer": writer,
                        "extra_validations": {},
                    }
                )
        counts[split] = write_jsonl(root / "nlvr2" / f"{split}.json", rows)
    return counts
