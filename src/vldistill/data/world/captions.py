"""Plain image-caption pairs: ``captions/captions.jsonl`` and ``captions/images/<n>.jpg``.

The demo pre-trains its unimodal and contrastive encoders on these (unlabelled pairs are cheap and
plentiful; labelled VL data is scarce). Each line is ``{"image": "images/000000.jpg", "caption":
...}`` with the image path relative to the ``captions`` folder.

The captions are what a careful describer writes, never question-answer pairs, but they cover the
language the zero-shot teacher is later asked to score: counts spelt as digits and as words ("2 red
circles", "three shapes"), absence and negation ("there are no triangles", "it is not true that
there is a star", the SNLI-VE / NLVR2 contradiction prompt), shapes named with their colour and
mostly with size and place, and single facts about one shape ("the circle at the top left is
red"). :data:`COVERED_RATE` of the pictures hold a covered box, described as such ("a grey box with a
red frame hides a shape", sometimes ", maybe there is a red star under the box", the language of the
SNLI-VE neutral label); such a caption states nothing the box could make false (no counts of kinds,
of the box's colour or of all shapes, no comparisons or negated statements). Every sentence is
checked against the scene, as in :mod:`vldistill.data.world.language`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vldistill.data.world.files import scaled, task_rng, write_jsonl
from vldistill.data.world.language import (
    NUMBER_WORDS,
    POSITION_PHRASES,
    article,
    choose,
    join_list,
    noun_phrase,
    plural,
    refer,
    statement,
)
from vldistill.data.world.render import STYLES, render, save_jpeg
from vldistill.data.world.scene import COLOURS, SHAPES, Scene, Shape, place, sample_scene

DEFAULT_CAPTIONS = 8000
MAX_WORDS = 30
"""Extra sentences are only added while the caption stays this short: the demo CLIP reads 40 tokens."""
# How often a shape mention names each attribute besides its kind.
MENTION_RATES: dict[str, float] = {"colour": 0.95, "size": 0.7, "position": 0.7}
# Chance that each kind of extra sentence is appended to the main description.
COUNT_RATE = 0.35
ABSENCE_RATE = 0.5
NEGATION_RATE = 0.2
COMPARISON_RATE = 0.15
TOTAL_RATE = 0.2
BACKGROUND_RATE = 0.2
COVERED_RATE = 0.3
"""Share of caption pictures with a covered shape (as every SNLI-VE picture has one)."""
MAYBE_RATE = 0.5
"""How often a covered box's caption adds what it may hide (``maybe there is a red star under the box``),
the language of the SNLI-VE neutral label."""
_BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "plain": ("on a plain background", "the background is plain"),
    "photo": ("over a photograph", "the background is a photograph"),
}


def write_captions(root: Path, style: str, seed: int, scale: float) -> dict[str, int]:
    """Write ``root/captions`` for one style; returns ``{"captions": count}``."""
    rng = task_rng(seed, style, "captions")
    image_dir = root / "captions" / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    background = "photo" if STYLES[style].photo_background else "plain"
    rows = []
    for n in range(scaled(DEFAULT_CAPTIONS, scale)):
        scene = sample_scene(rng, rotate=STYLES[style].rotate)
        if rng.random() < COVERED_RATE:  # at most 3 shapes: a quadrant is free for the box
            specs = [(s.kind, s.colour, s.size) for s in scene.shapes]
            scene = place(rng, specs, rotate=STYLES[style].rotate, covered=(choose(rng, SHAPES), choose(rng, COLOURS)))
        save_jpeg(render(scene, STYLES[style], rng), str(image_dir / f"{n:06d}.jpg"))
        rows.append({"image": f"images/{n:06d}.jpg", "caption": describe_scene(scene, rng, background)})
    return {"captions": write_jsonl(root / "captions" / "captions.jsonl", rows)}


def count_phrase(n: int, noun: str, rng: np.random.Generator, *, allow_article: bool = True) -> str:
    """``n`` of ``noun`` as people write it: ``2 circles``, ``two circles``, ``a circle``, ``no circles``.

    Digits and words are equally likely (VQA answers are digits, NLVR2 and SNLI-VE sentences words);
    ``allow_article=False`` never writes ``a circle`` for one (``a shape in all`` reads badly).
    """
    if n == 0:
        return f"{choose(rng, ['no', 'no', 'no', '0', 'zero'])} {plural(noun)}"
    if n == 1 and allow_article and rng.random() < 0.4:
        return f"{article(noun)} {noun}"
    number = str(n) if rng.random() < 0.5 else NUMBER_WORDS[n]
    return f"{number} {plural(noun, n)}"


def capitalise(text: str) -> str:
    """The first letter upper-cased, the rest untouched (``str.capitalize`` lowers the rest)."""
    return text[0].upper() + text[1:]


def describe_scene(scene: Scene, rng: np.random.Generator, background: str) -> str:
    """A true caption of ``scene``: a main description, then possibly short extra sentences.

    ``background`` names the style's background (``plain``, ``photo``) for occasional mention.
    The extras (absence, negation, a comparison, the total) are tried in random order and kept
    while the caption stays within :data:`MAX_WORDS` words.
    """
    scene = Scene(scene.visible + scene.covered)  # visible shapes first: indices below len(visible)
    forms = _MAIN_FORMS_WITH_COVER if scene.covered else _MAIN_FORMS
    main = forms[int(rng.integers(len(forms)))](scene, rng)
    sentences = [capitalise(main)]
    for box in scene.covered:
        sentences.append(capitalise(_covered(box, rng)))
    extras: list[tuple[float, Callable[[Scene, np.random.Generator], str | None]]] = [
        (COUNT_RATE, _count_of_one),
        (ABSENCE_RATE, _absence),
        (NEGATION_RATE, _negation),
        (COMPARISON_RATE, _comparison),
        (TOTAL_RATE, _total),
    ]
    for k in rng.permutation(len(extras)):
        rate, extra = extras[int(k)]
        if rng.random() >= rate:
            continue
        sentence = extra(scene, rng)
        if sentence is not None and _words(sentences) + len(sentence.split()) <= MAX_WORDS:
            sentences.append(capitalise(sentence))
    if rng.random() < BACKGROUND_RATE:
        options = _BACKGROUNDS["plain" if background == "plain" else "photo"]
        sentences.append(capitalise(choose(rng, options)))
    return " ".join(s + "." for s in sentences)


def _covered(box: Shape, rng: np.random.Generator) -> str:
    """A covered shape: ``a grey box with a red frame hides a shape``, maybe with what it may hide."""
    text = choose(
        rng,
        [
            f"a grey box with a {box.colour} frame hides a shape",
            f"a {box.colour} box covers a shape {POSITION_PHRASES[box.position]}",
            f"something is hidden under the {box.colour} box",
        ],
    )
    if rng.random() < MAYBE_RATE:
        text += f", maybe there is a {box.colour} {choose(rng, SHAPES)} under the box"
    return text


def _words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def _mention(shape: Shape, rng: np.random.Generator) -> str:
    """An indefinite description of one shape, nearly always with its colour, often size and place."""
    attrs = {"kind": shape.kind} | {a: getattr(shape, a) for a, rate in MENTION_RATES.items() if rng.random() < rate}
    phrase = noun_phrase(attrs)
    return f"{article(phrase)} {phrase}"


def _ordered(scene: Scene, rng: np.random.Generator) -> list[Shape]:
    """The visible shapes in random order."""
    return [scene.visible[int(i)] for i in rng.permutation(len(scene.visible))]


def _listing(scene: Scene, rng: np.random.Generator) -> str:
    """``A picture of a large red circle on the left and a blue star``, with or without an opener."""
    phrases = join_list([_mention(s, rng) for s in _ordered(scene, rng)])
    opener = choose(rng, ["", "a picture of", "an image with", "a drawing of", "this image shows", "we see"])
    return f"{opener} {phrases}" if opener else phrases


def _counted_listing(scene: Scene, rng: np.random.Generator) -> str:
    """``3 shapes: a red circle, ...`` or ``there are three shapes: ...``."""
    n = len(scene.visible)
    head = count_phrase(n, "shape", rng, allow_article=False)
    if rng.random() < 0.5:
        head = f"there {'is' if n == 1 else 'are'} {head}"
    return f"{head}: {join_list([_mention(s, rng) for s in _ordered(scene, rng)])}"


def _tally(scene: Scene, rng: np.random.Generator) -> str:
    """Counts of every kind, colour, or colour and kind present: ``there are 2 red circles and a star``."""
    group = choose(rng, ["kind", "colour", "both"])
    keys: dict[str, int] = {}
    for s in _ordered(scene, rng):
        noun = {"kind": s.kind, "colour": f"{s.colour} shape", "both": f"{s.colour} {s.kind}"}[group]
        keys[noun] = keys.get(noun, 0) + 1
    parts = [count_phrase(c, noun, rng) for noun, c in keys.items()]
    first = next(iter(keys.values()))
    return f"there {'is' if first == 1 else 'are'} {join_list(parts)}"


def _facts(scene: Scene, rng: np.random.Generator) -> str:
    """One or two facts about single shapes, each named so that only it fits.

    ``the circle on the left is red``, ``the red shape is a star``, ``the blue star is at the top``.
    """
    facts = []
    for shape_index in rng.permutation(len(scene.visible))[: int(rng.integers(1, 3))]:
        i = int(shape_index)
        shape = scene.shapes[i]
        told = choose(rng, ["colour", "kind", "position", "size"])
        subject = refer(scene, i, rng, exclude=(told,))
        if subject is None:
            continue
        value = {
            "colour": shape.colour,
            "kind": f"{article(shape.kind)} {shape.kind}",
            "position": POSITION_PHRASES[shape.position],
            "size": shape.size,
        }[told]
        facts.append(f"{subject} is {value}")
    if not facts:
        return _listing(scene, rng)
    return " and ".join(facts)


def _relation(scene: Scene, rng: np.random.Generator) -> str:
    """How two shapes sit: ``the red circle is to the left of the blue star``.

    Each shape is named so that only it fits; without position words, so the relation is news. The
    number of shapes is only added when no box hides one.
    """
    n = len(scene.visible)
    if n < 2:
        return _listing(scene, rng)
    i, j = (int(k) for k in rng.permutation(n)[:2])
    a, b = (refer(scene, k, rng, exclude=("position",)) for k in (i, j))
    if a is None or b is None:
        return _listing(scene, rng)
    text = f"{a} is {_relation_phrase(scene.shapes[i], scene.shapes[j])} {b}"
    if n > 2 and not scene.covered:
        text += f", among {count_phrase(n, 'shape', rng, allow_article=False)}"
    return text


def _relation_phrase(a: Shape, b: Shape) -> str:
    """How ``a`` sits relative to ``b``, e.g. ``to the left of`` or ``larger than``."""
    if a.size != b.size:
        return "larger than" if a.size == "large" else "smaller than"
    if abs(a.cx - b.cx) > abs(a.cy - b.cy):
        return "to the left of" if a.cx < b.cx else "to the right of"
    return "above" if a.cy < b.cy else "below"


_MAIN_FORMS: tuple[Callable[[Scene, np.random.Generator], str], ...] = (
    _listing,
    _listing,
    _counted_listing,
    _tally,
    _facts,
    _relation,
)
_MAIN_FORMS_WITH_COVER = (_listing, _listing, _facts, _relation)
"""Without the counts: a covered box hides a shape of its colour and of an unknown kind."""


def _absence(scene: Scene, rng: np.random.Generator) -> str | None:
    """Something the picture lacks: ``there are no triangles``, ``no blue shapes``, ``there is no red star``.

    The coloured shape is one whose kind or colour is present half the time (a near miss). With a
    covered box, only colours other than the box's are said to be missing (it may hide any kind).
    """
    hidden = {box.colour for box in scene.covered}
    form = int(rng.integers(3))
    if form == 0:
        missing = [k for k in SHAPES if scene.count(kind=k) == 0 and not hidden]
        noun = choose(rng, missing) if missing else None
    elif form == 1:
        missing = [f"{c} shape" for c in COLOURS if scene.count(colour=c) == 0 and c not in hidden]
        noun = choose(rng, missing) if missing else None
    else:
        near = scene.visible[int(rng.integers(len(scene.visible)))]
        colour = choose(rng, COLOURS) if rng.random() < 0.5 else near.colour
        kind = choose(rng, SHAPES) if colour == near.colour else near.kind
        noun = f"{colour} {kind}" if scene.count(kind=kind, colour=colour) == 0 and colour not in hidden else None
    if noun is None:
        return None
    phrasing = int(rng.integers(4))
    if phrasing == 0:
        return f"there is no {noun}"
    if phrasing == 1:
        return f"it is not true that there is {article(noun)} {noun}"
    if phrasing == 2:
        return f"no {plural(noun)}"
    return f"there are {count_phrase(0, noun, rng)}"


def _negation(scene: Scene, rng: np.random.Generator) -> str | None:
    """``it is not true that`` before a false sentence, the SNLI-VE and NLVR2 contradiction prompt.

    None with a covered box: what it hides could make the sentence true.
    """
    if scene.covered:
        return None
    false = statement(scene, rng, truth=False).rstrip(".")
    return f"it is not true that {false[0].lower()}{false[1:]}"


def _comparison(scene: Scene, rng: np.random.Generator) -> str | None:
    """``there are more circles than squares`` (or fewer, or as many); None if there are neither, or
    a covered box could hide either."""
    if scene.covered:
        return None
    a, b = (SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=2, replace=False))
    na, nb = scene.count(kind=a), scene.count(kind=b)
    if na == nb == 0:
        return None
    if na == nb:
        return f"there are as many {plural(a)} as {plural(b)}"
    return f"there are {'more' if na > nb else 'fewer'} {plural(a)} than {plural(b)}"


def _total(scene: Scene, rng: np.random.Generator) -> str | None:
    """``3 shapes in all``; None with a covered box (is the hidden shape counted or not?)."""
    if scene.covered:
        return None
    n = count_phrase(len(scene.visible), "shape", rng, allow_article=False)
    return f"{n} {choose(rng, ['in all', 'in total', 'altogether'])}"


def _count_of_one(scene: Scene, rng: np.random.Generator) -> str:
    """How many of one kind or colour (present more often than not): ``there are 2 circles``.

    With a covered box, only colours other than the box's are counted (it may hide any kind).
    """
    hidden = {box.colour for box in scene.covered}
    present = scene.visible[int(rng.integers(len(scene.visible)))]
    if not hidden and rng.random() < 0.5:
        kind = present.kind if rng.random() < 0.6 else choose(rng, SHAPES)
        n, noun = scene.count(kind=kind), kind
    else:
        colour = present.colour if rng.random() < 0.6 and present.colour not in hidden else None
        colour = colour or choose(rng, [c for c in COLOURS if c not in hidden])
        n, noun = scene.count(colour=colour), f"{colour} shape"
    phrase = count_phrase(n, noun, rng)
    return f"there {'is' if n == 1 else 'are'} {phrase}" if rng.random() < 0.6 else phrase
