"""Does the demo's CLIP teacher know *where* a word is? Word-to-region grounding on the world's VQA.

The world's "Where is the <colour> <shape>?" questions name one shape and answer with its quadrant.
For each, the teacher encodes the question and the picture; the relevance of the shape word (and,
separately, of the colour word) to each patch is the cosine of their embeddings in the teacher's
joint space, the very quantity CLIP-TD's token selection ranks by and ``method.relevance_weight``
distils (``vldistill.distill.relevance``). The word is *grounded* when the quadrant with the highest
summed relevance is the answer. Chance is 25% (four quadrants); a colour word can tie with a near
miss of the same colour elsewhere, so its ceiling is below 100%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from vldistill.data.examples import TaskExample
from vldistill.data.readers.vqa import read_vqa
from vldistill.data.world.scene import CANVAS, COLOURS, SHAPES, SLOT_CENTRES
from vldistill.distill.align import pool_words
from vldistill.models.teachers.clip import CLIPTeacher

QUESTION_TYPE = "where is the"


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
