"""VQA v2 in its official layout: questions and annotations JSON, COCO-named JPEG images.

One question per picture, of five kinds in turn (:data:`QUESTION_KINDS`): "is there a C S?" (yes/no),
"what color is the S?", "what shape is the C object?", "how many S / C shapes are there?" (0-3) and
"where is the C S?" (a quadrant). The answer is drawn first, then the question's words, then a
picture that makes the answer right, so answers are exactly balanced within each kind and the
question's text says nothing about its answer; "no" pictures hold near misses (the colour on another
shape, the shape in another colour) at :data:`HARD_NEGATIVE_RATE`. Each question gets ten annotator
answers that spell the right answer the ways real annotators do ("Two", "2", "two.", "a circle",
"yes!"), at least :data:`MIN_AGREEING` of them normalising to it, and sometimes a wrong one given
with confidence ``maybe`` or ``no``. ``multiple_choice_answer`` is the most common answer after the
official normalisation (:func:`vldistill.metrics.vqa.normalize_answer`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from vldistill.data.world.files import Deck, scaled, task_rng, write_json
from vldistill.data.world.language import NUMBER_WORDS, POSITION_PHRASES, article, choose, plural
from vldistill.data.world.render import STYLES, render, save_jpeg
from vldistill.data.world.scene import (
    COLOURS,
    MAX_SHAPES,
    POSITIONS,
    SHAPES,
    Scene,
    near_miss,
    place,
    random_spec,
)
from vldistill.metrics.vqa import normalize_answer

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
"""How often a "no" picture of "is there a C S?" holds a near miss (the asked colour on another shape,
or the asked shape in another colour): without near misses the question could be answered from colour
alone. The other shapes are random, so some pictures hold more than one."""
MIN_AGREEING = 6
"""Annotators (of ten) whose answer normalises to the right one, at least: the right answer is then a
strict majority, and ``multiple_choice_answer`` is always the drawn answer."""
WHERE_NEAR_MISS_RATE = 0.5
"""How often each other shape of a "where is the C S?" picture is a near miss."""


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


def _shuffled(rng: np.random.Generator, specs: list) -> list:
    return [specs[int(i)] for i in rng.permutation(len(specs))]


Words = tuple[str, ...]
Builder = Callable[[np.random.Generator, bool, str, Words], tuple[Question, Scene]]


def _exist(rng: np.random.Generator, rotate: bool, answer: str, words: Words) -> tuple[Question, Scene]:
    form, kind, colour = words
    n_others = int(rng.integers(0, MAX_SHAPES))
    if answer == "yes":
        specs = [(kind, colour, None), *_others(rng, n_others, lambda s: True)]
    else:
        near = [near_miss(rng, kind, colour)] if rng.random() < HARD_NEGATIVE_RATE else []
        specs = near + _others(rng, n_others + 1 - len(near), lambda s: s[:2] != (kind, colour))
    scene = place(rng, _shuffled(rng, specs), rotate=rotate)
    text = (f"Is there a {colour} {kind}?", f"Is there a {colour} {kind} in the picture?")[int(form)]
    return Question(text, "is there a", "yes/no", answer, "yesno"), scene


def _what_colour(rng: np.random.Generator, rotate: bool, answer: str, words: Words) -> tuple[Question, Scene]:
    form, kind = words
    others = _others(rng, int(rng.integers(0, MAX_SHAPES)), lambda s: s[0] != kind)
    scene = place(rng, _shuffled(rng, [(kind, answer, None), *others]), rotate=rotate)
    text = (f"What color is the {kind}?", f"What is the color of the {kind}?")[int(form)]
    return Question(text, "what color is the", "other", answer, "colour"), scene


def _what_shape(rng: np.random.Generator, rotate: bool, answer: str, words: Words) -> tuple[Question, Scene]:
    form, colour = words
    others = _others(rng, int(rng.integers(0, MAX_SHAPES)), lambda s: s[1] != colour)
    scene = place(rng, _shuffled(rng, [(answer, colour, None), *others]), rotate=rotate)
    text = (f"What shape is the {colour} object?", f"What is the shape of the {colour} object?")[int(form)]
    return Question(text, "what shape is the", "other", answer, "shape"), scene


def _how_many(rng: np.random.Generator, rotate: bool, answer: str, words: Words) -> tuple[Question, Scene]:
    attribute, value = words
    n = int(answer)
    # At least one shape in every picture; the others lack the counted kind (or colour).
    n_rest = int(rng.integers(0 if n else 1, MAX_SHAPES - n + 1))
    if attribute == "kind":
        counted = [(value, choose(rng, COLOURS), None) for _ in range(n)]
        rest = _others(rng, n_rest, lambda s: s[0] != value)
        text = f"How many {plural(value)} are there?"
    else:
        counted = [(choose(rng, SHAPES), value, None) for _ in range(n)]
        rest = _others(rng, n_rest, lambda s: s[1] != value)
        text = f"How many {value} shapes are there?"
    scene = place(rng, _shuffled(rng, counted + rest), rotate=rotate)
    return Question(text, "how many", "number", answer, "number"), scene


def _where(rng: np.random.Generator, rotate: bool, answer: str, words: Words) -> tuple[Question, Scene]:
    form, kind, colour = words
    n_others = int(rng.integers(0, MAX_SHAPES))
    others = [near_miss(rng, kind, colour) if rng.random() < WHERE_NEAR_MISS_RATE else None for _ in range(n_others)]
    others = [o or random_spec(rng, avoid=(kind, colour)) for o in others]
    scene = place(rng, [(kind, colour, None), *others], rotate=rotate, positions=[answer])
    text = (f"Where is the {colour} {kind}?", f"Where in the picture is the {colour} {kind}?")[int(form)]
    return Question(text, "where is the", "other", answer, "position"), scene


@dataclass(frozen=True)
class QuestionKind:
    """One kind of question: its answers, the word tuples its text is made of, and its picture builder.

    ``build(rng, rotate, answer, words)`` returns the question and a scene on which ``answer`` is right.
    """

    answers: tuple[str, ...]
    words: tuple[Words, ...]
    build: Builder


_FORMS = ("0", "1")  # two phrasings of each question
QUESTION_KINDS: dict[str, QuestionKind] = {
    "is there a": QuestionKind(("yes", "no"), tuple(product(_FORMS, SHAPES, COLOURS)), _exist),
    "what color is the": QuestionKind(COLOURS, tuple(product(_FORMS, SHAPES)), _what_colour),
    "what shape is the": QuestionKind(SHAPES, tuple(product(_FORMS, COLOURS)), _what_shape),
    "how many": QuestionKind(
        tuple(str(n) for n in range(MAX_SHAPES + 1)),
        tuple(("kind", k) for k in SHAPES) + tuple(("colour", c) for c in COLOURS),
        _how_many,
    ),
    "where is the": QuestionKind(POSITIONS, tuple(product(_FORMS, SHAPES, COLOURS)), _where),
}
"""The question kinds, in turn (each as often). The answer is drawn first from a :class:`Deck` of the
kind's answers, then the question's words from a deck of its own for that answer, then a picture
that makes the answer right: answers are exactly balanced within a kind, and every question text
occurs as often with each answer (to one), so the text says nothing about the answer."""


def draw_questions(rng: np.random.Generator, rotate: bool, n: int) -> Iterator[tuple[Question, Scene]]:
    """``n`` questions with their scenes, the kinds in turn (see :data:`QUESTION_KINDS`)."""
    kinds = list(QUESTION_KINDS.values())
    answer_decks = [Deck(kind.answers, rng) for kind in kinds]
    word_decks = [{answer: Deck(kind.words, rng) for answer in kind.answers} for kind in kinds]
    for k in range(n):
        j = k % len(kinds)
        answer = answer_decks[j].draw()
        yield kinds[j].build(rng, rotate, answer, word_decks[j][answer].draw())


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
        "number": [str(n) for n in range(MAX_SHAPES + 1)],
        "yesno": ["yes", "no"],
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "position": list(POSITIONS),
    }[kind]
    return choose(rng, [p for p in pool if p != answer])


def annotator_answers(question: Question, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Ten answers ``{answer, answer_confidence, answer_id}`` as in ``v2_mscoco_*_annotations.json``.

    At least :data:`MIN_AGREEING` of them spell the right answer in a way that normalises to it, so
    it is always the most common normalised answer (``multiple_choice_answer``).
    """
    n_wrong = int(rng.choice([0, 0, 0, 0, 1, 1, 2]))
    variants = _variants(question.answer, question.answer_kind)
    agreeing = [(text, w) for text, w in variants if normalize_answer(text) == question.answer]
    picks = [_weighted_picks(options, rng) for options in (variants, agreeing)]
    sure = rng.random(10)
    answers = []
    for k in range(10):
        if k < n_wrong:
            text = _wrong_answer(question.answer, question.answer_kind, rng)
            confidence = "maybe" if sure[k] < 0.6 else "no"
        else:
            text = picks[k < n_wrong + MIN_AGREEING][k]
            confidence = "yes" if sure[k] < 0.85 else "maybe"
        answers.append((text, confidence))
    order = rng.permutation(10)
    return [
        {"answer": answers[int(j)][0], "answer_confidence": answers[int(j)][1], "answer_id": k + 1}
        for k, j in enumerate(order)
    ]


def _weighted_picks(options: list[tuple[str, int]], rng: np.random.Generator) -> list[str]:
    """Ten texts drawn from ``(text, weight)`` options in proportion to the weights."""
    weights = np.array([w for _, w in options], dtype=float)
    return [options[int(i)][0] for i in rng.choice(len(options), size=10, p=weights / weights.sum())]


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
        draws = draw_questions(rng, STYLES[style].rotate, scaled(default_questions, scale))
        for n, (question, scene) in enumerate(draws):
            image_id = IMAGE_ID_OFFSET[split] + n
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
