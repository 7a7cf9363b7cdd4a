"""Words for scenes: number words, place phrases, referring expressions and true or false statements.

Every sentence is built from a :class:`~vldistill.data.world.scene.Scene` and checked against it, so
the captions and the VQA / VCR / NLVR2 writers that use these words agree with the picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vldistill.data.world.scene import COLOURS, MAX_SHAPES, SHAPES, SIZES, Scene, Shape

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left",
    "top right": "at the top right",
    "bottom left": "at the bottom left",
    "bottom right": "at the bottom right",
}
# Attribute sets tried for a referring expression, shortest first; position always disambiguates
# because each slot holds at most one shape.
_REFERRING_SETS: tuple[tuple[str, ...], ...] = (
    ("kind",),
    ("colour", "kind"),
    ("size", "kind"),
    ("colour",),
    ("size",),
    ("position",),
    ("size", "colour", "kind"),
    ("kind", "position"),
    ("colour", "position"),
)


def _could_hide(box: Shape, values: dict[str, str]) -> bool:
    """Whether the covered ``box`` could hide a shape with these attributes (its colour and place show)."""
    return all(values.get(a, getattr(box, a)) == getattr(box, a) for a in ("colour", "position"))


def plural(noun: str, n: int = 2) -> str:
    """``circle`` -> ``circles`` unless ``n == 1`` (every noun of the world is regular)."""
    return noun if n == 1 else noun + "s"


def article(word: str) -> str:
    """``a`` or ``an`` for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def choose(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def noun_phrase(attrs: dict[str, str], noun: str = "shape") -> str:
    """``{"size": "large", "colour": "red", "kind": "circle"}`` -> ``large red circle``.

    Without a ``kind`` the noun is ``noun``; a ``position`` becomes a trailing phrase.
    """
    words = [attrs[a] for a in ("size", "colour") if a in attrs] + [attrs.get("kind", noun)]
    if "position" in attrs:
        words.append(POSITION_PHRASES[attrs["position"]])
    return " ".join(words)


def refer(scene: Scene, index: int, rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> str | None:
    """A definite description (``the red circle``) that picks out the visible shape ``index`` alone.

    Attributes in ``exclude`` are never used (a colour question must not name the colour). A
    covered box could hide a shape of its colour and any kind, so a description it could fit is not
    unique. Returns ``None`` when no description without ``exclude`` is unique.
    """
    shape = scene.shapes[index]
    unique = []
    for attrs in _REFERRING_SETS:
        if any(a in exclude for a in attrs):
            continue
        values = {a: getattr(shape, a) for a in attrs}
        if len(scene.matching(**values)) == 1 and not any(_could_hide(box, values) for box in scene.covered):
            unique.append(values)
    if not unique:
        return None
    # Prefer short descriptions, but not always the shortest, so phrasing varies.
    # "What shape is the red object?" reads better than "... the red shape?".
    noun = "object" if "kind" in exclude else "shape"
    return "the " + noun_phrase(unique[int(rng.integers(min(2, len(unique))))], noun)


def join_list(items: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


Statement = tuple[str, bool]
"""A sentence about a scene and whether the scene makes it true."""


def _random_attrs(scene: Scene, rng: np.random.Generator) -> tuple[str, str, str]:
    """A (kind, colour, size) taken from a shape of the scene half the time, else at random."""
    if rng.random() < 0.5:
        s = scene.shapes[int(rng.integers(len(scene.shapes)))]
        return s.kind, s.colour, s.size
    return choose(rng, SHAPES), choose(rng, COLOURS), choose(rng, SIZES)


def _statement_exists(scene: Scene, rng: np.random.Generator) -> Statement:
    kind, colour, _ = _random_attrs(scene, rng)
    text = choose(rng, ["There is a {c} {k}.", "A {c} {k} is in the picture.", "The image shows a {c} {k}."])
    return text.format(c=colour, k=kind), scene.count(kind=kind, colour=colour) > 0


def _statement_count(scene: Scene, rng: np.random.Generator) -> Statement:
    n = len(scene.shapes) if rng.random() < 0.5 else int(rng.integers(1, MAX_SHAPES + 1))
    if rng.random() < 0.5:
        text = f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {plural('shape', n)}."
        return text, len(scene.shapes) == n
    kind = choose(rng, SHAPES) if rng.random() < 0.5 else scene.shapes[0].kind
    n = scene.count(kind=kind) if rng.random() < 0.5 else int(rng.integers(1, 4))
    text = f"The picture contains exactly {NUMBER_WORDS[n]} {plural(kind, n)}."
    return text, scene.count(kind=kind) == n


def _statement_position(scene: Scene, rng: np.random.Generator) -> Statement:
    kind, colour, _ = _random_attrs(scene, rng)
    position = choose(rng, list(POSITION_PHRASES))
    text = f"There is a {colour} {kind} {POSITION_PHRASES[position]}."
    return text, bool(scene.matching(kind=kind, colour=colour, position=position))


def _statement_size(scene: Scene, rng: np.random.Generator) -> Statement:
    kind, _, size = _random_attrs(scene, rng)
    return f"There is {article(size)} {size} {kind}.", scene.count(kind=kind, size=size) > 0


def _statement_absent(scene: Scene, rng: np.random.Generator) -> Statement:
    if rng.random() < 0.5:
        kind = choose(rng, SHAPES)
        return f"There is no {kind}.", scene.count(kind=kind) == 0
    colour = choose(rng, COLOURS)
    return f"There are no {colour} shapes.", scene.count(colour=colour) == 0


def _statement_all(scene: Scene, rng: np.random.Generator) -> Statement:
    if rng.random() < 0.5:
        colour = choose(rng, COLOURS) if rng.random() < 0.5 else scene.shapes[0].colour
        return f"All the shapes are {colour}.", scene.count(colour=colour) == len(scene.shapes)
    size = choose(rng, SIZES)
    return f"All the shapes are {size}.", scene.count(size=size) == len(scene.shapes)


STATEMENT_MAKERS: tuple[Callable[[Scene, np.random.Generator], Statement], ...] = (
    _statement_exists,
    _statement_count,
    _statement_position,
    _statement_size,
    _statement_absent,
    _statement_all,
)


def statement(scene: Scene, rng: np.random.Generator, truth: bool) -> str:
    """A sentence about ``scene`` that the picture makes ``truth`` (rejection sampling).

    The kind of sentence is drawn first and only its parameters are redrawn, so every kind is as
    frequent among true sentences as among false ones: the wording alone does not give the label.
    """
    while True:
        maker = STATEMENT_MAKERS[int(rng.integers(len(STATEMENT_MAKERS)))]
        for _ in range(30):
            text, value = maker(scene, rng)
            if value == truth:
                return text
