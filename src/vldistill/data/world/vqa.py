"""VQA v2 in its official layout: questions and annotations JSON, COCO-named JPEG images.

Each picture is drawn for one question, after the question and its answer (see
:data:`QUESTION_WRITERS`), so answers are balanced and only the picture tells them apart. Each
question gets ten annotator answers that spell the right answer the ways real annotators do ("Two",
"2", "two.", "a circle", "yes!"), and occasionally a wrong one given with confidence ``maybe`` or
``no``. ``multiple_choice_answer`` is the most common answer after the official normalisation (which
:func:`normalize_answer` mirrors).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vldistill.data.world.files import scaled, task_rng, write_json
from vldistill.data.world.language import NUMBER_WORDS, POSITION_PHRASES, article, choose, plural
from vldistill.data.world.render import STYLES, render, save_jpeg
from vldistill.data.world.scene import COLOURS, MAX_SHAPES, POSITIONS, SHAPES, Scene, place, random_spec

SPLITS: dict[str, int] = {"train2014": 6000, "val2014": 1500}  # questions (= images) at scale 1
IMAGE_ID_OFFSET: dict[str, int] = {"train2014": 100_000, "val2014": 500_000}
_INFO = {
    "description": "vldistill generated world, VQA v2 layout",
    "url": "https://visualqa.org",
    "version": "2.0",
    "year": 2017,
    "contributor": "vldistill",
    "date_created": "2017-04-26 17:00:44",
}
_LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}
HARD_NEGATIVE_RATE = 0.8
"""How often a "no" picture holds a near miss (the asked colour on another shape, or the asked shape in
another colour): without near misses "is there a red circle?" could be answered from colour alone."""


@dataclass(frozen=True)
class Question:
    """A question about a scene with its canonical answer and the kind of that answer."""

    text: str
    question_type: str
    answer_type: str  # "yes/no", "number" or "other"
    answer: str
    answer_kind: str  # "number", "yesno", "colour", "shape" or "position": picks spelling variants


def _others(rng: np.random.Generator, n: int, keep: Callable[[tuple[str, str, None]], bool]) -> list:
    """``n`` random shape specs that satisfy ``keep``."""
    out: list[tuple[str, str, None]] = []
    while len(out) < n:
        spec = random_spec(rng)
        if keep(spec):
            out.append(spec)
    return out


def _near_miss(rng: np.random.Generator, kind: str, colour: str) -> tuple[str, str, None]:
    """A shape sharing exactly one of ``kind`` and ``colour``."""
    if rng.random() < 0.5:
        return choose(rng, [k for k in SHAPES if k != kind]), colour, None
    return kind, choose(rng, [c for c in COLOURS if c != colour]), None


def _exist(rng: np.random.Generator, rotate: bool) -> tuple[Question, Scene]:
    kind, colour = choose(rng, SHAPES), choose(rng, COLOURS)
    yes = bool(rng.random() < 0.5)
    n_others = int(rng.integers(0, MAX_SHAPES))
    if yes:
        specs = [(kind, colour, None), *_others(rng, n_others, lambda s: True)]
    else:
        near = [_near_miss(rng, kind, colour)] if rng.random() < HARD_NEGATIVE_RATE else []
        specs = near + _others(rng, n_others + 1 - len(near), lambda s: s[:2] != (kind, colour))
    order = rng.permutation(len(specs))
    scene = place(rng, [specs[int(i)] for i in order], rotate=rotate)
    text = choose(rng, [f"Is there a {colour} {kind}?", f"Is there a {colour} {kind} in the picture?"])
    return Question(text, "is there a", "yes/no", "yes" if yes else "no", "yesno"), scene


def _what_colour(rng: np.random.Generator, rotate: bool) -> tuple[Question, Scene]:
    kind, colour = choose(rng, SHAPES), choose(rng, COLOURS)
    others = _others(rng, int(rng.integers(0, MAX_SHAPES)), lambda s: s[0] != kind)
    specs = [(kind, colour, None), *others]
    scene = place(rng, [specs[int(i)] for i in rng.permutation(len(specs))], rotate=rotate)
    text = choose(rng, [f"What color is the {kind}?", f"What is the color of the {kind}?"])
    return Question(text, "what color is the", "other", colour, "colour"), scene


def _what_shape(rng: np.random.Generator, rotate: bool) -> tuple[Question, Scene]:
    kind, colour = choose(rng, SHAPES), choose(rng, COLOURS)
    others = _others(rng, int(rng.integers(0, MAX_SHAPES)), lambda s: s[1] != colour)
    specs = [(kind, colour, None), *others]
    scene = place(rng, [specs[int(i)] for i in rng.permutation(len(specs))], rotate=rotate)
    text = choose(rng, [f"What shape is the {colour} object?", f"What is the shape of the {colour} object?"])
    return Question(text, "what shape is the", "other", kind, "shape"), scene


def _how_many(rng: np.random.Generator, rotate: bool) -> tuple[Question, Scene]:
    n = int(rng.integers(0, MAX_SHAPES + 1))
    if rng.random() < 0.5:
        kind = choose(rng, SHAPES)
        counted = [(kind, choose(rng, COLOURS), None) for _ in range(n)]
        rest = _others(rng, int(rng.integers(0 if n else 1, MAX_SHAPES - n + 1)), lambda s: s[0] != kind)
        text = f"How many {plural(kind)} are there?"
    else:
        colour = choose(rng, COLOURS)
        counted = [(choose(rng, SHAPES), colour, None) for _ in range(n)]
        rest = _others(rng, int(rng.integers(0 if n else 1, MAX_SHAPES - n + 1)), lambda s: s[1] != colour)
        text = f"How many {colour} shapes are there?"
    specs = counted + rest
    scene = place(rng, [specs[int(i)] for i in rng.permutation(len(specs))], rotate=rotate)
    return Question(text, "how many", "number", str(n), "number"), scene


def _where(rng: np.random.Generator, rotate: bool) -> tuple[Question, Scene]:
    kind, colour = choose(rng, SHAPES), choose(rng, COLOURS)
    position = choose(rng, POSITIONS)
    n_others = int(rng.integers(0, MAX_SHAPES))
    others = [_near_miss(rng, kind, colour) if rng.random() < 0.5 else None for _ in range(n_others)]
    others = [o or random_spec(rng, avoid=(kind, colour)) for o in others]
    scene = place(rng, [(kind, colour, None), *others], rotate=rotate, positions=[position])
    text = choose(rng, [f"Where is the {colour} {kind}?", f"Where in the picture is the {colour} {kind}?"])
    return Question(text, "where is the", "other", position, "position"), scene


QUESTION_WRITERS: tuple[Callable[[np.random.Generator, bool], tuple[Question, Scene]], ...] = (
    _exist,
    _what_colour,
    _what_shape,
    _how_many,
    _where,
)
"""Question kinds, each drawn as often: the question and its answer are drawn first (answers uniform
within a kind), then a picture that makes the answer right. The question's words therefore say
nothing about its answer: a text-only model is at chance within each kind."""


def _variants(answer: str, kind: str) -> list[tuple[str, int]]:
    """Spellings annotators use for ``answer``, with relative frequencies."""
    if kind == "number":
        word = NUMBER_WORDS[int(answer)]
        return [(answer, 6), (word, 2), (word.capitalize(), 1), (answer + " ", 1), (word + ".", 1)]
    if kind == "yesno":
        extra = "yes!" if answer == "yes" else "nope"
        return [(answer, 7), (answer.capitalize(), 2), (answer + ".", 1), (extra, 1)]
    if kind == "shape":
        return [(answer, 6), (f"{article(answer)} {answer}", 2), (answer.capitalize(), 2), (answer + ".", 1)]
    if kind == "position":
        return [(answer, 7), (answer.capitalize(), 2), (POSITION_PHRASES[answer], 1), (answer + " side", 1)]
    return [(answer, 7), (answer.capitalize(), 2), (answer + ".", 1), (answer + " ", 1)]


def _wrong_answer(answer: str, kind: str, rng: np.random.Generator) -> str:
    """A plausible mistake of the same kind (another count, colour, shape, place; the other of yes/no)."""
    pool = {
        "number": [str(n) for n in range(5)],
        "yesno": ["yes", "no"],
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "position": list(POSITIONS),
    }[kind]
    return choose(rng, [p for p in pool if p != answer])


def annotator_answers(question: Question, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Ten answers ``{answer, answer_confidence, answer_id}`` as in ``v2_mscoco_*_annotations.json``."""
    n_wrong = int(rng.choice([0, 0, 0, 0, 1, 1, 2]))
    variants = _variants(question.answer, question.answer_kind)
    weights = np.array([w for _, w in variants], dtype=float)
    picks = rng.choice(len(variants), size=10, p=weights / weights.sum())
    sure = rng.random(10)
    answers = []
    for k in range(10):
        if k < n_wrong:
            text = _wrong_answer(question.answer, question.answer_kind, rng)
            confidence = "maybe" if sure[k] < 0.6 else "no"
        else:
            text = variants[int(picks[k])][0]
            confidence = "yes" if sure[k] < 0.85 else "maybe"
        answers.append((text, confidence))
    order = rng.permutation(10)
    return [
        {"answer": answers[int(j)][0], "answer_confidence": answers[int(j)][1], "answer_id": k + 1}
        for k, j in enumerate(order)
    ]


_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!*#%^&$'"
_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(n) for n, w in enumerate(NUMBER_WORDS)} | {"none": "0"}


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation, reduced to what this world's answers need.

    >>> [normalize_answer(a) for a in ["Two", "2 ", "two.", "a circle", "Yes!"]]
    ['2', '2', '2', 'circle', 'yes']
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    for p in _PUNCTUATION:
        text = text.replace(p, "")
    text = re.sub(r"(?!<=\d)(\.)(?!\d)", "", text)
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def _most_common(answers: list[dict[str, Any]]) -> str:
    counts = Counter(normalize_answer(a["answer"]) for a in answers)
    return counts.most_common(1)[0][0]


def write_vqa(root: Path, style: str, seed: int, scale: float) -> dict[str, int]:
    """Write ``root/vqa`` for one style (one question per picture); returns question counts per split."""
    counts = {}
    for split, default_questions in SPLITS.items():
        rng = task_rng(seed, style, "vqa", split)
        questions, annotations = [], []
        image_dir = root / "vqa" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        for n in range(scaled(default_questions, scale)):
            image_id = IMAGE_ID_OFFSET[split] + n
            question, scene = QUESTION_WRITERS[n % len(QUESTION_WRITERS)](rng, STYLES[style].rotate)
            save_jpeg(render(scene, STYLES[style], rng), str(image_dir / f"COCO_{split}_{image_id:012d}.jpg"))
            question_id = image_id * 1000
            answers = annotator_answers(question, rng)
            questions.append({"image_id": image_id, "question": question.text, "question_id": question_id})
            annotations.append(
                {
                    "question_id": question_id,
                    "image_id": image_id,
                    "question_type": question.question_type,
                    "answer_type": question.answer_type,
                    "multiple_choice_answer": _most_common(answers),
                    "answers": answers,
                }
            )
        vqa_dir = root / "vqa"
        write_json(
            vqa_dir / f"v2_OpenEnded_mscoco_{split}_questions.json",
            {
                "info": _INFO,
                "task_type": "Open-Ended",
                "data_type": "mscoco",
                "data_subtype": split,
                "license": _LICENSE,
                "questions": questions,
            },
        )
        write_json(
            vqa_dir / f"v2_mscoco_{split}_annotations.json",
            {
                "info": _INFO,
                "license": _LICENSE,
                "data_subtype": split,
                "data_type": "mscoco",
                "annotations": annotations,
            },
        )
        counts[split] = len(questions)
    return counts
