"""VQA v2 in its official layout: questions and annotations JSON, COCO-named JPEG images.

Each image gets three questions of different types. Each question gets ten annotator answers that
spell the right answer the ways real annotators do ("Two", "2", "two.", "a circle", "yes!"), and
occasionally a wrong one given with confidence ``maybe`` or ``no``. ``multiple_choice_answer`` is
the most common answer after the official normalisation (which :func:`normalize_answer` mirrors).
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
from vldistill.data.world.language import NUMBER_WORDS, POSITION_PHRASES, article, choose, plural, refer
from vldistill.data.world.render import STYLES, render, save_jpeg
from vldistill.data.world.scene import COLOURS, POSITIONS, SHAPES, Scene, sample_scene

SPLITS: dict[str, int] = {"train2014": 500, "val2014": 170}  # images at scale 1; 3 questions each
QUESTIONS_PER_IMAGE = 3
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


@dataclass(frozen=True)
class Question:
    """A question about a scene with its canonical answer and the kind of that answer."""

    text: str
    question_type: str
    answer_type: str  # "yes/no", "number" or "other"
    answer: str
    answer_kind: str  # "number", "yesno", "colour", "shape" or "position": picks spelling variants


def _how_many(scene: Scene, rng: np.random.Generator) -> Question | None:
    form = int(rng.integers(3))
    # Ask about an attribute that is present more often than not, or "0" would dominate.
    present = scene.shapes[int(rng.integers(len(scene.shapes)))]
    if form == 0:
        kind = present.kind if rng.random() < 0.6 else choose(rng, SHAPES)
        text, n = f"How many {plural(kind)} are there?", scene.count(kind=kind)
    elif form == 1:
        colour = present.colour if rng.random() < 0.6 else choose(rng, COLOURS)
        text, n = f"How many {colour} shapes are there?", scene.count(colour=colour)
    else:
        text, n = "How many shapes are in the picture?", len(scene.shapes)
    return Question(text, "how many", "number", str(n), "number")


def _what_colour(scene: Scene, rng: np.random.Generator) -> Question | None:
    i = int(rng.integers(len(scene.shapes)))
    ref = refer(scene, i, rng, exclude=("colour",))
    if ref is None:
        return None
    return Question(f"What color is {ref}?", "what color is the", "other", scene.shapes[i].colour, "colour")


def _what_shape(scene: Scene, rng: np.random.Generator) -> Question | None:
    i = int(rng.integers(len(scene.shapes)))
    ref = refer(scene, i, rng, exclude=("kind",))
    if ref is None:
        return None
    return Question(f"What shape is {ref}?", "what shape is the", "other", scene.shapes[i].kind, "shape")


def _where(scene: Scene, rng: np.random.Generator) -> Question | None:
    i = int(rng.integers(len(scene.shapes)))
    ref = refer(scene, i, rng, exclude=("position",))
    if ref is None:
        return None
    return Question(f"Where is {ref}?", "where is the", "other", scene.shapes[i].position, "position")


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _is_there(scene: Scene, rng: np.random.Generator) -> Question | None:
    # Half the time ask about a shape that is there, so yes and no are balanced.
    if rng.random() < 0.5:
        s = scene.shapes[int(rng.integers(len(scene.shapes)))]
        kind, colour = s.kind, s.colour
    else:
        kind, colour = choose(rng, SHAPES), choose(rng, COLOURS)
    if rng.random() < 0.5:
        text, value = f"Is there a {colour} {kind}?", scene.count(kind=kind, colour=colour) > 0
    else:
        text, value = f"Is there {article(kind)} {kind} in the picture?", scene.count(kind=kind) > 0
    return Question(text, "is there a", "yes/no", _yes_no(value), "yesno")


def _are_there(scene: Scene, rng: np.random.Generator) -> Question | None:
    if rng.random() < 0.5:
        kind = choose(rng, SHAPES) if rng.random() < 0.5 else scene.shapes[0].kind
        return Question(
            f"Are there any {plural(kind)}?",
            "are there",
            "yes/no",
            _yes_no(scene.count(kind=kind) > 0),
            "yesno",
        )
    a, b = rng.choice(len(SHAPES), size=2, replace=False)
    ka, kb = SHAPES[int(a)], SHAPES[int(b)]
    value = scene.count(kind=ka) > scene.count(kind=kb)
    return Question(f"Are there more {plural(ka)} than {plural(kb)}?", "are there", "yes/no", _yes_no(value), "yesno")


def _is_the(scene: Scene, rng: np.random.Generator) -> Question | None:
    i = int(rng.integers(len(scene.shapes)))
    shape = scene.shapes[i]
    if rng.random() < 0.5:
        ref = refer(scene, i, rng, exclude=("size",))
        asked = "large" if rng.random() < 0.5 else "small"
        text, value = f"Is {ref} {asked}?", shape.size == asked
    else:
        ref = refer(scene, i, rng, exclude=("position",))
        asked = choose(rng, POSITIONS)
        text, value = f"Is {ref} {POSITION_PHRASES[asked]}?", shape.position == asked
    return None if ref is None else Question(text, "is the", "yes/no", _yes_no(value), "yesno")


QUESTION_WRITERS: tuple[Callable[[Scene, np.random.Generator], Question | None], ...] = (
    _how_many,
    _what_colour,
    _what_shape,
    _where,
    _is_there,
    _are_there,
    _is_the,
)


def _ask(
    writer: Callable[[Scene, np.random.Generator], Question | None], scene: Scene, rng: np.random.Generator
) -> Question | None:
    """A question from ``writer``; yes/no ones are redrawn until they hit a coin-flipped answer.

    Without this, "is there a ..." questions would lean to the answers the scene makes likely, and a
    blind model could score well by always answering "yes" or "no".
    """
    question = writer(scene, rng)
    if question is None or question.answer_type != "yes/no":
        return question
    target = _yes_no(rng.random() < 0.5)
    for _ in range(30):
        if question is not None and question.answer == target:
            return question
        question = writer(scene, rng)
    return None


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
    """Write ``root/vqa`` for one style; returns question counts per split."""
    counts = {}
    for split, default_images in SPLITS.items():
        rng = task_rng(seed, style, "vqa", split)
        questions, annotations = [], []
        image_dir = root / "vqa" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        for n in range(scaled(default_images, scale)):
            image_id = IMAGE_ID_OFFSET[split] + n
            scene = sample_scene(rng, rotate=STYLES[style].rotate)
            save_jpeg(render(scene, STYLES[style], rng), str(image_dir / f"COCO_{split}_{image_id:012d}.jpg"))
            writers = list(rng.permutation(len(QUESTION_WRITERS)))
            asked = 0
            while asked < QUESTIONS_PER_IMAGE and writers:
                question = _ask(QUESTION_WRITERS[int(writers.pop())], scene, rng)
                if question is None:
                    continue
                question_id = image_id * 1000 + asked
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
                asked += 1
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
