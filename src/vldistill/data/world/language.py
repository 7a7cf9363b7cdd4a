"""Words for scenes: referring expressions, captions, and true / false / undecidable statements.

Every sentence is built from a :class:`~vldistill.data.world.scene.Scene` and checked against it,
so captions, SNLI-VE hypotheses and the VQA / VCR / NLVR2 writers all agree with the picture.
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
    """A definite description (``the red circle``) that picks out shape ``index`` alone.

    Attributes in ``exclude`` are never used (a colour question must not name the colour).
    Returns ``None`` when no description without them is unique.
    """
    shape = scene.shapes[index]
    unique = []
    for attrs in _REFERRING_SETS:
        if any(a in exclude for a in attrs):
            continue
        values = {a: getattr(shape, a) for a in attrs}
        if len(scene.matching(**values)) == 1:
            unique.append(values)
    if not unique:
        return None
    # Prefer short descriptions, but not always the shortest, so phrasing varies.
    # "What shape is the red object?" reads better than "... the red shape?".
    noun = "object" if "kind" in exclude else "shape"
    return "the " + noun_phrase(unique[int(rng.integers(min(2, len(unique))))], noun)


def shape_phrase(shape: Shape, rng: np.random.Generator) -> str:
    """An indefinite description of one shape with a random subset of its attributes."""
    attrs: dict[str, str] = {"kind": shape.kind}
    if rng.random() < 0.85:
        attrs["colour"] = shape.colour
    if rng.random() < 0.5:
        attrs["size"] = shape.size
    if rng.random() < 0.4:
        attrs["position"] = shape.position
    phrase = noun_phrase(attrs)
    return f"{article(phrase)} {phrase}"


def join_list(items: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, rng: np.random.Generator, background: str) -> str:
    """A true description of the whole scene in one of several phrasings.

    ``background`` names the style's background (``plain``, ``photo``) for occasional mention.
    """
    shapes = list(scene.shapes)
    order = rng.permutation(len(shapes))
    phrases = [shape_phrase(shapes[int(i)], rng) for i in order]
    n = len(shapes)
    form = int(rng.integers(5))
    if form == 0:
        text = f"{choose(rng, ['A picture of', 'An image with', 'A drawing of'])} {join_list(phrases)}"
    elif form == 1:
        text = f"{NUMBER_WORDS[n].capitalize()} {plural('shape', n)}: {join_list(phrases)}"
    elif form == 2:
        counts = [(k, scene.count(kind=k)) for k in SHAPES if scene.count(kind=k)]
        parts = [f"{NUMBER_WORDS[c] if c > 1 else 'a'} {plural(k, c)}" for k, c in counts]
        text = f"{'There is' if counts[0][1] == 1 else 'There are'} {join_list(parts)}"
    elif form == 3 and n >= 2:
        a, b = (shapes[int(i)] for i in order[:2])
        relation = _relation_phrase(a, b)
        text = f"The {a.colour} {a.kind} is {relation} the {b.colour} {b.kind}"
        if n > 2:
            text += f", among {NUMBER_WORDS[n]} shapes"
    else:
        text = join_list(phrases)
        text = text[0].upper() + text[1:]
    if rng.random() < 0.3:
        text += " on a plain background" if background == "plain" else " over a photograph"
    return text + "."


def _relation_phrase(a: Shape, b: Shape) -> str:
    """How ``a`` sits relative to ``b``, e.g. ``to the left of`` or ``larger than``."""
    if a.size != b.size:
        return "larger than" if a.size == "large" else "smaller than"
    if abs(a.cx - b.cx) > abs(a.cy - b.cy):
        return "to the left of" if a.cx < b.cx else "to the right of"
    return "above" if a.cy < b.cy else "below"


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


_NEUTRAL_ABOUT_SHAPE: tuple[str, ...] = (
    "The {c} {k} is made of wood.",
    "The {k} was painted by a child.",
    "The {c} {k} is very heavy.",
    "Someone will move the {k} tomorrow.",
    "The {k} is made of plastic.",
    "The {c} {k} is cold to the touch.",
    "The {k} is the artist's favourite shape.",
)
_NEUTRAL_ABOUT_PICTURE: tuple[str, ...] = (
    "The picture was taken yesterday.",
    "This picture was drawn in Paris.",
    "The shapes were cut out of paper.",
    "The artist used a new brush.",
    "The picture hangs in a museum.",
)


def neutral_statement(scene: Scene, rng: np.random.Generator) -> str:
    """A sentence the picture can neither confirm nor refute (material, time, maker...)."""
    if rng.random() < 0.65:
        s = scene.shapes[int(rng.integers(len(scene.shapes)))]
        return choose(rng, _NEUTRAL_ABOUT_SHAPE).format(c=s.colour, k=s.kind)
    return choose(rng, _NEUTRAL_ABOUT_PICTURE)
