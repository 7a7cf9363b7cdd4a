"""What the demo's CLIP teacher knows: zero-shot VQA (:func:`zero_shot_vqa`) and whether it knows *where*
a word is (:func:`grounding_accuracy`, word-to-region grounding on the world's VQA).

The world's "Where is the <colour> <shape>?" questions name one shape and answer with its quadrant.
For each, the teacher encodes the question and the picture; the relevance of the shape word (and,
separately, of the colour word) to each patch is the cosine of their embeddings in the teacher's
joint space, the very quantity CLIP-TD's token selection ranks by and ``method.relevance_weight``
distils (``vldistill.distill.relevance``). The word is *grounded* when the quadrant with the highest
summed relevance is the answer. Chance is 25% (four quadrants); a colour word can tie with a near
miss of the same colour elsewhere, so its ceiling is below 100%.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from vldistill.data.examples import TaskExample
from vldistill.data.readers.vqa import read_vqa
from vldistill.data.tasks import ExampleBuilder
from vldistill.data.world.scene import CANVAS, COLOURS, SHAPES, SLOT_CENTRES
from vldistill.distill.align import pool_words
from vldistill.models.teachers.clip import CLIPTeacher

QUESTION_TYPE = "where is the"


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as raw:
        return raw.convert("RGB")


def _quadrant_of_cells(rows: int, cols: int) -> torch.Tensor:
    """``(rows * cols,)`` index into ``SLOT_CENTRES`` of the quadrant each grid cell (row-major) lies in."""
    names = list(SLOT_CENTRES)
    out = []
    for r in range(rows):
        for c in range(cols):
            y, x = (r + 0.5) * CANVAS / rows, (c + 0.5) * CANVAS / cols
            distance = [(SLOT_CENTRES[name][0] - x) ** 2 + (SLOT_CENTRES[name][1] - y) ** 2 for name in names]
            out.append(distance.index(min(distance)))
    return torch.tensor(out)


@torch.no_grad()
def grounding_accuracy(
    teacher: CLIPTeacher, vqa_root: Path, split: str = "val2014", limit: int = 400
) -> dict[str, Any]:
    """Share of "where" questions whose colour / shape word's relevance peaks in the answer's quadrant.

    Returns ``{"questions": n, "shape_word": fraction, "colour_word": fraction, "chance": 0.25}`` (up
    to ``limit`` questions of ``split``).
    """
    records = [r for r in read_vqa(vqa_root, split) if r.question_type == QUESTION_TYPE][:limit]
    names = list(SLOT_CENTRES)
    hits = {"shape_word": 0, "colour_word": 0}
    counted = 0
    for record in records:
        answer = record.multiple_choice_answer
        words = record.question.lower().rstrip("?").split()
        if answer not in names or words[-1] not in SHAPES or words[-2] not in COLOURS:
            continue
        with Image.open(record.image_path) as raw:
            image = raw.convert("RGB")
        example = TaskExample(
            uid=str(record.question_id), task="vqa", images=(record.image_path,), texts=(record.question,)
        )
        out = teacher.encode([example], [[image]])
        rows, cols = out.image_grid
        patches = F.normalize(out.image_token_embeds[0], dim=-1)  # (P, E)
        words_embeds, _ = pool_words(out.text_token_embeds, out.text_word_index, len(words))
        words_embeds = F.normalize(words_embeds[0], dim=-1)  # (W, E)
        quadrant = _quadrant_of_cells(rows, cols)
        for key, position in (("shape_word", len(words) - 1), ("colour_word", len(words) - 2)):
            relevance = patches @ words_embeds[position]
            per_quadrant = torch.zeros(len(names)).index_add(0, quadrant, relevance)
            hits[key] += int(names[int(per_quadrant.argmax())] == answer)
        counted += 1
    n = max(counted, 1)
    return {"questions": counted, "shape_word": hits["shape_word"] / n, "colour_word": hits["colour_word"] / n} | {
        "chance": 0.25
    }


def zero_shot_vqa(teacher: CLIPTeacher, vqa_root: Path, split: str = "val2014", batch_size: int = 64) -> dict[str, Any]:
    """CLIP-TD's zero-shot view of VQA: how often the gold ``"<question> <answer>"`` candidate scores highest.

    Candidates are built by :class:`ExampleBuilder` on the training split (gold + the most frequent
    answers of the question's type). Returns ``{"questions", "accuracy", "chance", "gold_probability",
    "by_type": {answer_type: {"questions", "accuracy", "chance"}}}``, chance being the mean of
    1 / candidates and ``gold_probability`` the mean softmax probability of the gold candidate.
    """
    builder = ExampleBuilder("vqa", read_vqa(vqa_root, "train2014"))
    examples = [ex for ex in builder(read_vqa(vqa_root, split)) if ex.gold_candidate >= 0]
    decoded = {path: _rgb(path) for path in sorted({ex.images[0] for ex in examples})}
    rows: list[tuple[str, bool, float, float]] = []  # answer type, hit, chance, gold probability
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        images = [[decoded[ex.images[0]]] for ex in batch]
        logits, cand_mask = teacher.score_candidates(batch, images)
        probs = logits.masked_fill(~cand_mask, float("-inf")).softmax(dim=1)
        for ex, p, m in zip(batch, probs, cand_mask, strict=True):
            gold = ex.gold_candidate
            rows.append((ex.meta["answer_type"], int(p.argmax()) == gold, 1 / int(m.sum()), float(p[gold])))

    def summary(selected: Sequence[tuple[str, bool, float, float]]) -> dict[str, Any]:
        n = max(len(selected), 1)
        return {
            "questions": len(selected),
            "accuracy": sum(r[1] for r in selected) / n,
            "chance": sum(r[2] for r in selected) / n,
            "gold_probability": sum(r[3] for r in selected) / n,
        }

    types = sorted({r[0] for r in rows})
    return summary(rows) | {"by_type": {t: summary([r for r in rows if r[0] == t]) for t in types}}
