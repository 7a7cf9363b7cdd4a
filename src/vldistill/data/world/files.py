"""Plumbing shared by the task writers: deterministic JSON, split sizes, per-task random streams, balanced draws."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")

STYLE_IDS: dict[str, int] = {"base": 0, "shifted": 1}
TASK_IDS: dict[str, int] = {"vqa": 0, "snli_ve": 1, "vcr": 2, "nlvr2": 3, "captions": 4}


def task_rng(seed: int, style: str, task: str, split: str = "") -> np.random.Generator:
    """An independent random stream per (seed, style, task, split).

    Streams never share state, so generating one style or one task alone gives the same bytes as
    generating everything, and adding a split never changes the others.
    """
    split_key = [ord(c) for c in split]
    return np.random.default_rng(np.random.SeedSequence([seed, STYLE_IDS[style], TASK_IDS[task], *split_key]))


def scaled(default: int, scale: float, minimum: int = 2) -> int:
    """``default * scale`` rounded, never below ``minimum`` (tiny worlds still have every split)."""
    return max(minimum, round(default * scale))


def write_json(path: Path, obj: Any) -> None:
    """Compact JSON as the publishers ship it (one line, key order as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """One JSON object per line; returns the number of lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> list[int]:
    """``n`` labels in ``range(n_classes)``, as equal in number as ``n`` allows, in random order."""
    return [int(v) for v in rng.permutation(np.arange(n) % n_classes)]


class Deck(Generic[T]):
    """Draws ``items`` in rounds: each round is a fresh random order of all of them.

    After ``n`` draws every item has been drawn ``n // len(items)`` or one more time, so a deck of
    answers balances answers exactly, and a deck of question texts per answer makes the text
    independent of the answer (what a text-only model would need to beat chance).
    """

    def __init__(self, items: Sequence[T], rng: np.random.Generator) -> None:
        if not items:
            raise ValueError("a deck needs at least one item")
        self.items, self.rng = list(items), rng
        self._round: list[T] = []

    def draw(self) -> T:
        """The next item; a new round is shuffled when the last one is used up."""
        if not self._round:
            self._round = [self.items[int(k)] for k in self.rng.permutation(len(self.items))]
        return self._round.pop()
