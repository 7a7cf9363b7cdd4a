"""The generated world's pre-training captions: true to the scene, and in the words teachers are asked."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vldistill.data.world.captions import MAX_WORDS, count_phrase, describe_scene
from vldistill.data.world.language import NUMBER_WORDS
from vldistill.data.world.scene import COLOURS, SHAPES, Scene, Shape, place, sample_scene

_NUMBER = (
    {w: n for n, w in enumerate(NUMBER_WORDS)}
    | {str(n): n for n in range(9)}
    | {
        "a": 1,
        "an": 1,
        "no": 0,
    }
)
# "there are 2 red circles", "no triangles", "a blue shape", "there is no red star"
_COUNT = re.compile(
    r"^(?:there (?:is|are) )?(?P<n>\d|[a-z]+) (?P<colour>[a-z]+ )?(?P<kind>circle|square|triangle|star|shape)s?$"
)


_KINDS = "|".join(SHAPES)


def _captions(n: int, seed: int = 0) -> list[tuple[Scene, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, rotate=False)
        out.append((scene, describe_scene(scene, rng, "plain")))
    return out


def _sentences(caption: str) -> list[str]:
    return [s.lower() for s in caption.rstrip(".").split(". ")]


def test_count_phrase_spells_counts_as_digits_words_articles_and_no() -> None:
    rng = np.random.default_rng(0)
    twos = {count_phrase(2, "circle", rng) for _ in range(40)}
    assert twos == {"2 circles", "two circles"}
    ones = {count_phrase(1, "red shape", rng) for _ in range(40)}
    assert ones == {"a red shape", "1 red shape", "one red shape"}
    assert {count_phrase(1, "shape", rng, allow_article=False) for _ in range(40)} == {"1 shape", "one shape"}
    assert {count_phrase(0, "star", rng) for _ in range(60)} == {"no stars", "0 stars", "zero stars"}


def test_every_stated_count_and_absence_is_true() -> None:
    checked = {"counts": 0, "absences": 0}
    for scene, caption in _captions(400):
        for sentence in _sentences(caption):
            match = _COUNT.match(sentence)
            if match is None or match["n"] not in _NUMBER:
                continue
            colour = (match["colour"] or "").strip() or None
            if colour is not None and colour not in COLOURS:
                continue  # "a large circle" is a mention, not a count
            kind = None if match["kind"] == "shape" else match["kind"]
            n = _NUMBER[match["n"]]
            assert scene.count(kind=kind, colour=colour) == n, (caption, sentence)
            checked["absences" if n == 0 else "counts"] += 1
    assert checked["counts"] > 100 and checked["absences"] > 50


def test_negations_deny_a_false_statement() -> None:
    negated = 0
    for scene, caption in _captions(300):
        for sentence in _sentences(caption):
            # "it is not true that there is a <colour or size> <kind>": no such shape.
            match = re.fullmatch(r"it is not true that there is an? (\w+) (circle|square|triangle|star)", sentence)
            if match:
                attr = "colour" if match[1] in COLOURS else "size"
                assert scene.count(kind=match[2], **{attr: match[1]}) == 0, caption
                negated += 1
            # "it is not true that there is no <kind>": there is one.
            match = re.fullmatch(r"it is not true that there is no (circle|square|triangle|star)", sentence)
            if match:
                assert scene.count(kind=match[1]) > 0, caption
                negated += 1
    assert negated > 15


def test_captions_mix_digits_words_absence_and_negation() -> None:
    captions = [c.lower() for _, c in _captions(600)]

    def share(pattern: str) -> float:
        return float(np.mean([re.search(pattern, c) is not None for c in captions]))

    assert share(r"\b[0-4] (?:\w+ )?(?:circle|square|triangle|star|shape)") > 0.25
    assert share(r"\b(?:one|two|three|four) (?:\w+ )?(?:circle|square|triangle|star|shape)") > 0.15
    assert share(r"\bno \w+") > 0.15
    assert share(r"it is not true that") > 0.15
    assert share(r"more|fewer|as many") > 0.05
    assert max(len(c.split()) for c in captions) <= MAX_WORDS + 8  # a 4-shape listing may run over
    assert len(set(captions)) > 0.95 * len(captions)


def test_listed_shapes_nearly_always_name_the_colour() -> None:
    mentions = colours = sizes = 0
    listing = re.compile(r"^(?:we see |a picture of |an image with |a drawing of |this image shows |.*: )")
    for _, caption in _captions(400):
        for sentence in _sentences(caption):
            # "a picture of a large red circle on the left, a star and ..."; "3 shapes: a ..."
            if not listing.match(sentence):
                continue
            body = listing.sub("", sentence)
            for phrase in re.findall(r"\ban? ((?:\w+ ){0,2})(?:circle|square|triangle|star)\b", body):
                words = phrase.split()
                mentions += 1
                colours += any(w in COLOURS for w in words)
                sizes += any(w in ("small", "large") for w in words)
    assert mentions > 300
    assert colours / mentions > 0.9 and 0.6 < sizes / mentions < 0.8


def test_a_one_shape_scene_is_described_only_by_its_own_attributes() -> None:
    scene = Scene((Shape("star", "blue", "small", "top right", 48.0, 16.0),))
    rng = np.random.default_rng(3)
    other_words = {*COLOURS, "circle", "square", "triangle", "large", "left", "bottom", "box", "grey"} - {"blue"}
    positive = 0
    for _ in range(50):
        for sentence in _sentences(describe_scene(scene, rng, "photo")):
            if re.search(r"\b(?:no|0|zero|not|all)\b", sentence):
                continue  # absence and negation name what is missing
            positive += 1
            assert not other_words & set(re.findall(r"\w+", sentence)), sentence
    assert positive > 50


@pytest.mark.parametrize("background, words", [("plain", "plain"), ("photo", "photograph")])
def test_background_is_named_only_as_its_style(background: str, words: str) -> None:
    rng = np.random.default_rng(1)
    scene = sample_scene(rng, rotate=False)
    texts = [describe_scene(scene, rng, background) for _ in range(100)]
    assert any(words in t for t in texts)
    assert not any(("photograph" if background == "plain" else "plain") in t for t in texts)


def test_with_a_covered_box_captions_state_only_what_the_box_cannot_change() -> None:
    """A box framed in red hides a red shape of unknown kind: counts of kinds, of red shapes and of all
    shapes, negations and comparisons could all be wrong, so only shapes of other colours are counted."""
    rng = np.random.default_rng(5)
    covered = colour_counts = maybes = 0
    for _ in range(400):
        visible = sample_scene(rng, rotate=False)
        box = (SHAPES[int(rng.integers(4))], COLOURS[int(rng.integers(5))])
        scene = place(rng, [(s.kind, s.colour, s.size) for s in visible.shapes], rotate=False, covered=box)
        caption = describe_scene(scene, rng, "plain")
        sentences = _sentences(caption)
        frames = [s for s in sentences if "box" in s]
        assert len(frames) == 1 and box[1] in frames[0], caption
        covered += 1
        maybes += "maybe there is a" in frames[0]
        for sentence in sentences:
            assert not re.search(r"more|fewer|as many|in all|in total|altogether", sentence), caption
            if "not true" in sentence:  # only an absence: "it is not true that there is a blue star"
                denied = re.fullmatch(rf"it is not true that there is an? (\w+) ({_KINDS}|shape)", sentence)
                assert denied and denied[1] != box[1], caption
                assert scene.count(colour=denied[1], kind=None if denied[2] == "shape" else denied[2]) == 0
                continue
            match = _COUNT.match(sentence)
            if match is None or match["n"] not in _NUMBER or sentence.startswith(("a ", "an ")):
                continue
            # "there are 2 blue shapes", "there are no blue stars": never of the box's colour, never kinds alone
            assert match["colour"] and match["colour"].strip() != box[1], caption
            kind = None if match["kind"] == "shape" else match["kind"]
            assert scene.count(colour=match["colour"].strip(), kind=kind) == _NUMBER[match["n"]], caption
            colour_counts += 1
    assert covered == 400 and colour_counts > 60 and 150 < maybes < 250
