"""VCR in its official layout: ``<split>.jsonl`` plus ``vcr1images/<movie>/<name>.jpg|json``.

Questions, answers and rationales refer to objects by index, as in real VCR (``What color is [0]
?`` is ``["What", "color", "is", [0], "?"]``). Each question has four answers (one right) and four
rationales: the right one is a true statement about the referenced objects that supports the
answer (``[0] is the biggest shape in the picture .``), the wrong ones are false statements of the
same kinds, so choosing a rationale requires looking at the picture. Answer and rationale labels
are spread uniformly over the four positions. Pictures hold 2-4 shapes, one per quadrant (no
covered boxes); the metadata boxes are the rendered objects' boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vldistill.data.world.files import balanced_labels, scaled, task_rng, write_json, write_jsonl
from vldistill.data.world.language import POSITION_PHRASES, choose
from vldistill.data.world.render import STYLES, render, save_jpeg
from vldistill.data.world.scene import CANVAS, COLOURS, POSITIONS, Scene, sample_scene

SPLITS: dict[str, int] = {"train": 600, "val": 200}  # questions at scale 1
MAX_QUESTIONS_PER_IMAGE = 2
IMAGES_PER_MOVIE = 20
RELATION_MARGIN = 6.0  # pixels between centres before "left of" / "above" count as true
Statement = tuple[str, bool]


@dataclass(frozen=True)
class _Item:
    """A question with its right answer, three wrong answers, and rationale statements."""

    question: str
    answer: str
    wrong_answers: list[str]
    rationales: list[Statement]


def _colour_item(scene: Scene, i: int, j: int, rng: np.random.Generator) -> _Item:
    ci = scene.shapes[i].colour
    question = choose(rng, ["What color is [{i}] ?", "What is the color of [{i}] ?"]).format(i=i)
    wrong = [f"[{i}] is {c} ." for c in rng.permutation([c for c in COLOURS if c != ci])[:3]]
    rationales: list[Statement] = [
        (f"[{i}] is the only {c} shape in the picture .", scene.count(colour=c) == 1 and c == ci) for c in COLOURS
    ]
    for k in range(len(scene.shapes)):
        if k != i:
            same = scene.shapes[k].colour == ci
            rationales += [
                (f"[{i}] has the same color as [{k}] .", same),
                (f"[{i}] and [{k}] have different colors .", not same),
            ]
    return _Item(question, f"[{i}] is {ci} .", wrong, rationales)


def _size_item(scene: Scene, i: int, j: int, rng: np.random.Generator) -> _Item | None:
    if scene.shapes[i].size == scene.shapes[j].size:
        return None
    big, small = (i, j) if scene.shapes[i].size == "large" else (j, i)
    question = choose(rng, ["Which is larger , [{i}] or [{j}] ?", "Which shape is bigger , [{i}] or [{j}] ?"])
    wrong = [
        f"[{small}] is larger than [{big}] .",
        f"[{i}] and [{j}] are the same size .",
        f"[{i}] and [{j}] are both small .",
    ]
    only_big = scene.count(size="large") == 1
    only_small = scene.count(size="small") == 1
    rationales: list[Statement] = [
        (f"[{big}] is the biggest shape in the picture .", only_big),
        (f"[{small}] is the smallest shape in the picture .", only_small),
        (f"[{big}] is large and [{small}] is small .", True),
        (f"[{big}] covers more of the picture than [{small}] .", True),
        (f"[{small}] is the biggest shape in the picture .", False),
        (f"[{big}] is the smallest shape in the picture .", False),
        (f"[{big}] is small and [{small}] is large .", False),
        (f"[{small}] covers more of the picture than [{big}] .", False),
        (f"[{big}] and [{small}] are both small .", False),
    ]
    return _Item(question.format(i=i, j=j), f"[{big}] is larger than [{small}] .", wrong, rationales)


def _where_item(scene: Scene, i: int, j: int, rng: np.random.Generator) -> _Item:
    si = scene.shapes[i]
    question = choose(rng, ["Where is [{i}] ?", "Where in the picture is [{i}] ?"]).format(i=i)
    wrong = [f"[{i}] is {POSITION_PHRASES[p]} ." for p in POSITIONS if p != si.position]
    rationales: list[Statement] = [
        (f"[{i}] is in the {p} corner of the picture .", p == si.position) for p in POSITIONS
    ]
    for k, sk in enumerate(scene.shapes):
        if k != i:
            rationales += [
                (f"[{i}] is to the left of [{k}] .", si.cx < sk.cx - RELATION_MARGIN),
                (f"[{i}] is to the right of [{k}] .", si.cx > sk.cx + RELATION_MARGIN),
                (f"[{i}] is above [{k}] .", si.cy < sk.cy - RELATION_MARGIN),
                (f"[{i}] is below [{k}] .", si.cy > sk.cy + RELATION_MARGIN),
            ]
    return _Item(question, f"[{i}] is {POSITION_PHRASES[si.position]} .", wrong, rationales)


def _same_colour_item(scene: Scene, i: int, j: int, rng: np.random.Generator) -> _Item:
    ci, cj = scene.shapes[i].colour, scene.shapes[j].colour
    question = choose(rng, ["Do [{i}] and [{j}] have the same color ?", "Are [{i}] and [{j}] the same color ?"])

    def both(c: str) -> str:
        return f"Yes , [{i}] and [{j}] are both {c} ."

    def differ(a: str, b: str) -> str:
        return f"No , [{i}] is {a} and [{j}] is {b} ."

    answer = both(ci) if ci == cj else differ(ci, cj)
    candidates = [both(c) for c in COLOURS] + [differ(a, b) for a in COLOURS for b in COLOURS if a != b]
    # Prefer near misses (one colour right) so the wrong answers are not ruled out by a glance.
    near = [c for c in candidates if c != answer and (ci in c or cj in c)]
    wrong = [near[int(k)] for k in rng.permutation(len(near))[:3]]
    rationales: list[Statement] = [(f"[{k}] is {c} .", scene.shapes[k].colour == c) for k in (i, j) for c in COLOURS]
    return _Item(question.format(i=i, j=j), answer, wrong, rationales)


ITEM_WRITERS = (_colour_item, _size_item, _where_item, _same_colour_item)


def tokens(text: str) -> list[str | list[int]]:
    """``"What color is [0] ?"`` -> ``["What", "color", "is", [0], "?"]``."""
    return [[int(t[1:-1])] if t.startswith("[") else t for t in text.split()]


def _orig(text: str) -> str:
    """The untokenised original with 1-based object numbers, as VCR's ``*_orig`` fields."""
    words = [str(int(t[1:-1]) + 1) if t.startswith("[") else t for t in text.split()]
    return " ".join(words).replace(" ?", "?").replace(" .", ".").replace(" ,", ",")


def _choices(right: str, wrong: list[str], label: int, rng: np.random.Generator) -> list[str]:
    order = [wrong[int(k)] for k in rng.permutation(len(wrong))]
    return order[:label] + [right] + order[label:]


def _sources_and_iters(index: int, label: int, pool: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """``*_sources`` (annotation each choice came from; the right one is this one) and ``*_match_iter``."""
    sources = [int(s) for s in rng.integers(0, pool, size=4)]
    sources[label] = index
    others = [int(v) for v in rng.permutation([1, 2, 3])]
    iters = others[:label] + [0] + others[label:]
    return sources, iters


def _metadata(scene: Scene, rng: np.random.Generator) -> dict[str, Any]:
    boxes = [[round(v, 2) for v in s.box()] + [round(float(rng.uniform(0.9, 1.0)), 4)] for s in scene.shapes]
    segms = [[[[round(x, 2), round(y, 2)] for x, y in s.outline()]] for s in scene.shapes]
    names = [s.kind for s in scene.shapes]
    return {"boxes": boxes, "segms": segms, "names": names, "width": CANVAS, "height": CANVAS}


def _item(scene: Scene, rng: np.random.Generator) -> _Item | None:
    i, j = (int(v) for v in rng.choice(len(scene.shapes), size=2, replace=False))
    item = ITEM_WRITERS[int(rng.integers(len(ITEM_WRITERS)))](scene, i, j, rng)
    if item is None or not any(t for _, t in item.rationales) or sum(not t for _, t in item.rationales) < 3:
        return None
    return item


def write_vcr(root: Path, style: str, seed: int, scale: float) -> dict[str, int]:
    """Write ``root/vcr`` for one style; returns question counts per split."""
    counts = {}
    for split, default_questions in SPLITS.items():
        rng = task_rng(seed, style, "vcr", split)
        n_questions = scaled(default_questions, scale)
        answer_labels = balanced_labels(n_questions, 4, rng)
        rationale_labels = balanced_labels(n_questions, 4, rng)
        rows: list[dict[str, Any]] = []
        image_index = 0
        while len(rows) < n_questions:
            scene = sample_scene(rng, rotate=STYLES[style].rotate, n_shapes=int(rng.integers(2, 5)))
            wanted = min(int(rng.integers(1, MAX_QUESTIONS_PER_IMAGE + 1)), n_questions - len(rows))
            items: list[_Item] = []
            for _ in range(4 * wanted):
                item = _item(scene, rng)
                if item and len(items) < wanted and all(item.question != other.question for other in items):
                    items.append(item)
            if not items:
                continue
            movie = f"shapes_{split}_{image_index // IMAGES_PER_MOVIE:04d}"
            name = f"{movie}@{image_index}"
            image_path = root / "vcr" / "vcr1images" / movie / f"{name}.jpg"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            save_jpeg(render(scene, STYLES[style], rng), str(image_path))
            write_json(image_path.with_suffix(".json"), _metadata(scene, rng))
            image_fields = {
                "movie": movie,
                "objects": [s.kind for s in scene.shapes],
                "img_fn": f"{movie}/{name}.jpg",
                "metadata_fn": f"{movie}/{name}.json",
                "img_id": f"{split}-{image_index}",
            }
            for question_number, item in enumerate(items):
                index = len(rows)
                labels = (answer_labels[index], rationale_labels[index])
                rows.append(
                    image_fields
                    | _row(index, item, labels, n_questions, rng)
                    | {
                        "question_number": question_number,
                        "annot_id": f"{split}-{index}",
                        "match_fold": f"{split}-{index % 2}",
                        "match_index": index,
                    }
                )
            image_index += 1
        counts[split] = write_jsonl(root / "vcr" / f"{split}.jsonl", rows)
    return counts


def _row(index: int, item: _Item, labels: tuple[int, int], pool: int, rng: np.random.Generator) -> dict[str, Any]:
    """The question, choices and labels of VCR line ``index``; ``labels``: (answer, rationale) positions."""
    answer_label, rationale_label = labels
    true = [text for text, truth in item.rationales if truth]
    false = [text for text, truth in item.rationales if not truth]
    rationale = choose(rng, true)
    wrong_rationales = [false[int(k)] for k in rng.permutation(len(false))[:3]]
    answers = _choices(item.answer, item.wrong_answers, answer_label, rng)
    rationales = _choices(rationale, wrong_rationales, rationale_label, rng)
    answer_sources, answer_iters = _sources_and_iters(index, answer_label, pool, rng)
    rationale_sources, rationale_iters = _sources_and_iters(index, rationale_label, pool, rng)
    return {
        "interesting_scores": [int(rng.integers(-1, 3))],
        "answer_likelihood": choose(rng, ["likely", "likely", "possible", "unlikely"]),
        "answer_orig": _orig(item.answer),
        "question_orig": _orig(item.question),
        "rationale_orig": _orig(rationale),
        "question": tokens(item.question),
        "answer_match_iter": answer_iters,
        "answer_sources": answer_sources,
        "answer_choices": [tokens(a) for a in answers],
        "answer_label": answer_label,
        "rationale_choices": [tokens(r) for r in rationales],
        "rationale_sources": rationale_sources,
        "rationale_match_iter": rationale_iters,
        "rationale_label": rationale_label,
    }
