"""File plumbing shared by the task writers: deterministic JSON, split sizes, per-task random streams."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

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
