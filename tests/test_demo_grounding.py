"""Word-to-region grounding of the demo's CLIP (``vldistill.demo.grounding``) with teachers whose answer is known."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vldistill.data.readers.vqa import read_vqa
from vldistill.data.world import generate_world
from vldistill.data.world.scene import SLOT_CENTRES
from vldistill.demo.grounding import QUESTION_TYPE, _quadrant_of_cells, grounding_accuracy

GRID = 4  # 4 x 4 patches: each quadrant holds 2 x 2 of them
NAMES = list(SLOT_CENTRES)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, style="base", scale=0.05)
    return out / "base" / "vqa"


class _Teacher:
    """Embeds every word of "where is the <colour> <shape>" as a unit vector; patches of quadrant ``q`` as
    ``e_q``. ``point`` says which quadrant's direction the colour and shape words take (by question)."""

    def __init__(self, point) -> None:
        self.point = point

    def encode(self, examples, images):
        question = examples[0].texts[0].lower().rstrip("?").split()
        quadrant = _quadrant_of_cells(GRID, GRID)
        patches = torch.nn.functional.one_hot(quadrant, 8).float()[None]  # (1, P, 8)
        words = torch.zeros(1, len(question), 8)
        words[0, :, 4 + 3] = 1.0  # filler words: a direction no patch takes
        target = NAMES.index(self.point(examples[0]))
        words[0, -1] = words[0, -2] = 0.0
        words[0, -1, target] = words[0, -2, target] = 1.0
        index = torch.arange(len(question))[None]
        return SimpleNamespace(
            image_grid=(GRID, GRID), image_token_embeds=patches, text_token_embeds=words, text_word_index=index
        )


def test_cells_fall_in_their_quadrants() -> None:
    got = _quadrant_of_cells(GRID, GRID).view(GRID, GRID)
    assert [NAMES[int(got[r, c])] for r, c in ((0, 0), (0, 3), (3, 0), (3, 3))] == [
        "top left",
        "top right",
        "bottom left",
        "bottom right",
    ]
    assert torch.bincount(got.flatten()).tolist() == [4, 4, 4, 4]


def test_a_teacher_pointing_at_the_answer_is_always_grounded(world: Path) -> None:
    answers = {str(r.question_id): r.multiple_choice_answer for r in read_vqa(world, "val2014")}
    result = grounding_accuracy(_Teacher(lambda ex: answers[ex.uid]), world)
    where = [r for r in read_vqa(world, "val2014") if r.question_type == QUESTION_TYPE]
    assert result["questions"] == len(where) > 0
    assert (result["shape_word"], result["colour_word"], result["chance"]) == (1.0, 1.0, 0.25)


def test_a_teacher_pointing_at_one_corner_scores_that_corners_share(world: Path) -> None:
    where = [r for r in read_vqa(world, "val2014") if r.question_type == QUESTION_TYPE]
    share = sum(r.multiple_choice_answer == "top left" for r in where) / len(where)
    result = grounding_accuracy(_Teacher(lambda ex: "top left"), world)
    assert result["shape_word"] == result["colour_word"] == pytest.approx(share)
