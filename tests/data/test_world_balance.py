"""The generated world's labels need the picture: answers and labels are balanced, the question or
hypothesis text says nothing about them, and the pictures hold near misses at the documented rates."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from vldistill.data.world import nlvr2, snli_ve, vqa
from vldistill.data.world.scene import COLOURS, SHAPES, Scene
from vldistill.data.world.snli_ve import HYPOTHESIS_FORMS, LABELS, draw_hypotheses
from vldistill.data.world.vqa import QUESTION_KINDS, draw_questions

STYLES = ("base", "shifted")
_WORDS = re.compile(r"\b(?:" + "|".join(COLOURS) + r")\b|\b(?:" + "|".join(SHAPES) + r")s?\b")
_PAIR = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")
NEAR_MISS_SHARE_OF_RANDOM = 7 / 19
"""Of the 19 (kind, colour) pairs other than the asked one, 3 share its colour and 4 its kind."""


def pattern(text: str) -> str:
    """The text with colour and shape words replaced: ``Is there a red star?`` -> ``Is there a C S?``."""
    return _WORDS.sub(lambda m: "C" if m[0] in COLOURS else "S", text)


def _vqa_split(root: Path, split: str) -> list[tuple[str, str, str]]:
    """(question text, question type, multiple-choice answer) of a generated VQA split."""
    questions = json.loads((root / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]
    annotations = json.loads((root / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]
    by_id = {a["question_id"]: a for a in annotations}
    return [
        (q["question"], by_id[q["question_id"]]["question_type"], by_id[q["question_id"]]["multiple_choice_answer"])
        for q in questions
    ]


def _spread(counts: Counter, keys: tuple[str, ...]) -> int:
    values = [counts[k] for k in keys]
    return max(values) - min(values)


def test_vqa_answers_are_balanced_within_each_kind_and_each_question_text(
    world: tuple[Path, dict[str, int]],
) -> None:
    out, _ = world
    for style in STYLES:
        for split in ("train2014", "val2014"):
            rows = _vqa_split(out / style / "vqa", split)
            kinds = Counter(t for _, t, _ in rows)
            assert set(kinds) == set(QUESTION_KINDS) and max(kinds.values()) - min(kinds.values()) <= 1
            for name, kind in QUESTION_KINDS.items():
                answers = Counter(a for _, t, a in rows if t == name)
                assert set(answers) <= set(kind.answers) and _spread(answers, kind.answers) <= 1, (name, answers)
            # Every question text comes as often with each answer of its kind, to one.
            by_text: dict[str, Counter] = defaultdict(Counter)
            for text, _, answer in rows:
                by_text[text][answer] += 1
            for text, answers in by_text.items():
                name = next(t for q, t, _ in rows if q == text)
                assert _spread(answers, QUESTION_KINDS[name].answers) <= 1, (text, answers)


def test_vqa_a_text_only_model_is_at_chance() -> None:
    """The best a text-only model can do is the most frequent answer of each question text: learned on
    6,000 drawn questions, it scores chance on 1,500 others (per kind 1/answers; 0.29 on average)."""
    train = [q for q, _ in draw_questions(np.random.default_rng(0), False, 6000)]
    test = [q for q, _ in draw_questions(np.random.default_rng(1), True, 1500)]
    by_pattern: dict[str, Counter] = defaultdict(Counter)
    by_text: dict[str, Counter] = defaultdict(Counter)
    for q in train:
        by_pattern[pattern(q.text)][q.answer] += 1
        by_text[q.text][q.answer] += 1
    assert len(by_pattern) == 10  # two phrasings per kind
    for text_pattern, answers in by_pattern.items():
        kind = next(QUESTION_KINDS[q.question_type] for q in train if pattern(q.text) == text_pattern)
        shares = np.array([answers[a] for a in kind.answers]) / sum(answers.values())
        assert np.abs(shares - 1 / len(kind.answers)).max() < 0.03, (text_pattern, answers)
    guess = {text: max(sorted(answers), key=answers.__getitem__) for text, answers in by_text.items()}
    right = [guess[q.text] == q.answer for q in test]
    chance = np.mean([1 / len(QUESTION_KINDS[q.question_type].answers) for q in test])
    assert chance == pytest.approx((1 / 2 + 1 / 5 + 1 / 4 + 1 / 4 + 1 / 4) / 5, abs=1e-3)
    assert abs(np.mean(right) - chance) < 0.03


def _near_miss_share(scenes: list[tuple[str, Scene]], *, per_picture: bool) -> float:
    """Of pictures (or of their other shapes): the share holding a shape that shares exactly one of
    the kind and colour named in the text."""
    hits = []
    for text, scene in scenes:
        colour, kind = _PAIR.search(text).groups()
        near = [(s.kind == kind) != (s.colour == colour) for s in scene.visible if (s.kind, s.colour) != (kind, colour)]
        hits += [any(near)] if per_picture else near
    return float(np.mean(hits))


@pytest.mark.parametrize("rate", [vqa.HARD_NEGATIVE_RATE, 0.0, 1.0])
def test_vqa_no_pictures_hold_near_misses_at_the_documented_rate(rate: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vqa, "HARD_NEGATIVE_RATE", rate)
    drawn = draw_questions(np.random.default_rng(0), False, 6000)
    no = [(q.text, s) for q, s in drawn if q.question_type == "is there a" and q.answer == "no"]
    assert len(no) == 600
    # Without a planted near miss, 1-3 random other shapes (equally likely) hold one by chance.
    by_chance = 1 - np.mean([(1 - NEAR_MISS_SHARE_OF_RANDOM) ** m for m in (1, 2, 3)])
    assert _near_miss_share(no, per_picture=True) == pytest.approx(rate + (1 - rate) * by_chance, abs=0.04)


def test_vqa_where_and_snli_ve_other_shapes_are_near_misses_at_the_documented_rates() -> None:
    drawn = draw_questions(np.random.default_rng(0), False, 6000)
    where = [(q.text, s) for q, s in drawn if q.question_type == "where is the"]
    expected = vqa.WHERE_NEAR_MISS_RATE + (1 - vqa.WHERE_NEAR_MISS_RATE) * NEAR_MISS_SHARE_OF_RANDOM
    assert _near_miss_share(where, per_picture=False) == pytest.approx(expected, abs=0.03)
    hypotheses = [
        (h, s) for gold, h, s in draw_hypotheses(np.random.default_rng(0), False, 6000) if gold != "entailment"
    ]
    expected = snli_ve.NEAR_MISS_RATE + (1 - snli_ve.NEAR_MISS_RATE) * NEAR_MISS_SHARE_OF_RANDOM
    assert _near_miss_share(hypotheses, per_picture=False) == pytest.approx(expected, abs=0.02)


def test_snli_ve_hypotheses_say_nothing_about_their_labels(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    for style in STYLES:
        for split in ("train", "dev", "test"):
            rows = [json.loads(line) for line in (out / style / "snli_ve" / f"snli_ve_{split}.jsonl").open()]
            assert _spread(Counter(r["gold_label"] for r in rows), LABELS) <= 1
            by_text: dict[str, Counter] = defaultdict(Counter)
            for r in rows:
                by_text[r["sentence2"]][r["gold_label"]] += 1
            assert all(_spread(labels, LABELS) <= 1 for labels in by_text.values())
    # On a full-size split, each label is a third of every form, colour and shape.
    drawn = list(draw_hypotheses(np.random.default_rng(0), True, 6000))
    groups: dict[str, Counter] = defaultdict(Counter)
    for gold, hypothesis, _ in drawn:
        colour, kind = _PAIR.search(hypothesis).groups()
        for key in (pattern(hypothesis), colour, kind):
            groups[key][gold] += 1
    assert set(groups) == {pattern(f.format(c="red", k="star")) for f in HYPOTHESIS_FORMS} | set(COLOURS) | set(SHAPES)
    for key, labels in groups.items():
        shares = np.array([labels[label] for label in LABELS]) / sum(labels.values())
        assert np.abs(shares - 1 / 3).max() < 0.02, (key, labels)


def test_snli_ve_every_picture_holds_one_covered_box_deciding_neutral_from_contradiction() -> None:
    for gold, hypothesis, scene in draw_hypotheses(np.random.default_rng(2), True, 600):
        colour, kind = _PAIR.search(hypothesis).groups()
        (box,) = scene.covered
        assert 1 <= len(scene.visible) <= 2
        visible = scene.count(kind=kind, colour=colour) > 0
        assert gold == ("entailment" if visible else "neutral" if box.colour == colour else "contradiction")


def test_nlvr2_sets_need_few_sentences_and_an_impossible_sentence_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    original = nlvr2._sentence

    def counted(rng: np.random.Generator) -> tuple:
        drawn.append(1)
        return original(rng)

    monkeypatch.setattr(nlvr2, "_sentence", counted)
    rng = np.random.default_rng(0)
    sets = [nlvr2._sample_set(rng, rotate=False) for _ in range(200)]
    assert len(drawn) <= 210  # a sentence is redrawn only when 400 random pairs never gave one truth value
    assert all(sorted(truth for truth, _ in pairs) == [False, True] for _, _, pairs in sets)
    monkeypatch.setattr(nlvr2, "_sentence", lambda rng: ("Never.", "shape", lambda a, b: False))
    monkeypatch.setattr(nlvr2, "MAX_TRIES", 3)
    with pytest.raises(RuntimeError, match="no NLVR2 sentence of 50"):
        nlvr2._sample_set(rng, rotate=False)
