"""Every label of the generated world agrees with its picture: rendering checked pixel by pixel, and
the base style's VQA answers, SNLI-VE labels and captions checked against what the pixels show."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from world_pixels import Seen, nearest_colour, read_picture

from vldistill.data.world.render import COVER_FRAME, COVER_GREY, STYLES, render
from vldistill.data.world.scene import COLOURS, POSITIONS, SHAPES, Scene, Shape
from vldistill.data.world.snli_ve import draw_hypotheses
from vldistill.data.world.vqa import draw_questions

_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_P = "|".join(POSITIONS)


def answer_from(seen: list[Seen], question: str) -> str:
    """The answer to a VQA question of the world, worked out from what a picture shows."""
    shapes = [s for s in seen if not s.covered]
    if m := re.fullmatch(rf"Is there a ({_C}) ({_S})(?: in the picture)?\?", question):
        return "yes" if any((s.colour, s.kind) == m.groups() for s in shapes) else "no"
    if m := re.fullmatch(rf"What (?:color is|is the color of) the ({_S})\?", question):
        (colour,) = [s.colour for s in shapes if s.kind == m[1]]
        return colour
    if m := re.fullmatch(rf"What (?:shape is|is the shape of) the ({_C}) object\?", question):
        (kind,) = [s.kind for s in shapes if s.colour == m[1]]
        return kind
    if m := re.fullmatch(rf"How many ({_S})s are there\?", question):
        return str(sum(s.kind == m[1] for s in shapes))
    if m := re.fullmatch(rf"How many ({_C}) shapes are there\?", question):
        return str(sum(s.colour == m[1] for s in shapes))
    m = re.fullmatch(rf"Where (?:in the picture )?is the ({_C}) ({_S})\?", question)
    assert m, question
    (position,) = [s.position for s in shapes if (s.colour, s.kind) == m.groups()]
    return position


def label_from(seen: list[Seen], hypothesis: str) -> str:
    """The SNLI-VE label of "there is a C S" on what a picture shows."""
    colour, kind = re.search(rf"\b({_C}) ({_S})\b", hypothesis).groups()
    if any((s.colour, s.kind) == (colour, kind) for s in seen if not s.covered):
        return "entailment"
    return "neutral" if any(s.covered and s.colour == colour for s in seen) else "contradiction"


def _seen(scene: Scene) -> list[Seen]:
    return [Seen(s.position, s.colour, None if s.covered else s.kind) for s in scene.shapes]


@pytest.mark.parametrize("style", ["base", "shifted"])
def test_shapes_are_drawn_in_their_colour_and_a_covered_box_grey_inside_a_frame_of_its_colour(style: str) -> None:
    palette = STYLES[style].palette
    rng = np.random.default_rng(0)
    for colour, box_colour in zip(COLOURS, COLOURS[1:] + COLOURS[:1], strict=True):
        shapes = [
            Shape(kind, colour, size, position, cx, cy, angle=20.0 if style == "shifted" else 0.0)
            for kind, size, (position, (cx, cy)) in zip(
                SHAPES[:3],
                ("small", "large", "large"),
                [("top left", (16, 16)), ("top right", (48, 17)), ("bottom left", (15, 48))],
                strict=True,
            )
        ]
        angle = 20.0 if style == "shifted" else 0.0  # the shifted style turns shapes, never boxes
        box = Shape(SHAPES[3], box_colour, "large", "bottom right", 48.0, 47.0, angle=angle, covered=True)
        pixels = np.asarray(render(Scene((*shapes, box)), STYLES[style], rng), dtype=np.int32)
        for shape in shapes:  # the middle of each shape is its colour
            x, y = int(shape.cx), int(shape.cy)
            for rgb in pixels[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3):
                assert nearest_colour(rgb, palette) == colour, (style, shape)
        # The box spans x 35.5-60.5, y 34.5-59.5: whole pixels x 36..59, y 35..58, the outer 3 its frame.
        x1, y1, x2, y2 = (math.ceil(box.box()[0]), math.ceil(box.box()[1]), *(math.floor(v) for v in box.box()[2:]))
        assert (x1, y1, x2, y2) == (36, 35, 60, 59)
        inner = pixels[y1 + COVER_FRAME + 1 : y2 - COVER_FRAME - 1, x1 + COVER_FRAME + 1 : x2 - COVER_FRAME - 1]
        assert inner.shape[:2] == (16, 16) and np.abs(inner - np.array(COVER_GREY)).max() <= 1
        frame = [pixels[y1 + 1, x1 + 12], pixels[y2 - 2, x1 + 12], pixels[y1 + 12, x1 + 1], pixels[y1 + 12, x2 - 2]]
        frame += [pixels[y1, x1], pixels[y1, x2 - 1], pixels[y2 - 1, x1], pixels[y2 - 1, x2 - 1]]  # upright corners
        assert [nearest_colour(rgb, palette) for rgb in frame] == [box_colour] * 8, style
        if style == "base":  # nothing outside the box: the background is flat
            outside = np.concatenate(
                [pixels[y1 - 3 : y1 - 1, x1:x2].reshape(-1, 3), pixels[y1:y2, x2 + 1].reshape(-1, 3)]
            )
            assert np.abs(outside - pixels[63, 63]).max() <= 1


@pytest.mark.parametrize("rotate", [False, True])
def test_drawn_answers_and_labels_agree_with_their_scenes(rotate: bool) -> None:
    rng = np.random.default_rng(3)
    for question, scene in draw_questions(rng, rotate, 1000):
        assert not scene.covered and 1 <= len(scene.shapes) <= 3
        assert answer_from(_seen(scene), question.text) == question.answer, question
    for gold, hypothesis, scene in draw_hypotheses(rng, rotate, 600):
        assert label_from(_seen(scene), hypothesis) == gold, (hypothesis, scene)


def test_vqa_answers_agree_with_the_pictures(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    root = out / "base" / "vqa"
    checked = 0
    for split in ("train2014", "val2014"):
        questions = json.loads((root / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]
        annotations = json.loads((root / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]
        answers = {a["question_id"]: a["multiple_choice_answer"] for a in annotations}
        for q in questions:
            seen = read_picture(root / split / f"COCO_{split}_{q['image_id']:012d}.jpg")
            assert 1 <= len(seen) <= 3 and not any(s.covered for s in seen)
            assert answer_from(seen, q["question"]) == answers[q["question_id"]], q
            checked += 1
    assert checked == 375


def test_snli_ve_labels_agree_with_the_pictures(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    root = out / "base" / "snli_ve"
    checked = 0
    for split in ("train", "dev", "test"):
        for line in (root / f"snli_ve_{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            seen = read_picture(root / "flickr30k_images" / f"{row['Flickr30K_ID']}.jpg")
            assert sum(s.covered for s in seen) == 1 and 2 <= len(seen) <= 3
            assert label_from(seen, row["sentence2"]) == row["gold_label"], row["sentence2"]
            checked += 1
    assert checked == 413


def test_captions_name_what_the_pictures_show(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    root = out / "base" / "captions"
    placed = boxes = 0
    for line in (root / "captions.jsonl").read_text().splitlines():
        row = json.loads(line)
        seen = {s.position: s for s in read_picture(root / row["image"])}
        caption = row["caption"].lower()
        # "a small red star at the bottom left": that shape is there (unless the sentence denies it).
        for sentence in caption.split(". "):
            if re.search(r"\b(?:no|not)\b", sentence):
                continue
            for colour, kind, position in re.findall(rf"\b({_C}) ({_S}) at the ({_P})\b", sentence):
                assert (seen[position].colour, seen[position].kind) == (colour, kind), caption
                placed += 1
        # "a grey box with a red frame hides a shape": the picture's one covered box is red.
        covered = [s.colour for s in seen.values() if s.covered]
        framed = re.findall(rf"a grey box with an? ({_C}) frame|a ({_C}) box covers|under the ({_C}) box", caption)
        assert len(covered) == len(framed) <= 1, caption
        assert [next(c for c in f if c) for f in framed] == covered, caption
        boxes += len(covered)
    assert placed > 150 and 80 < boxes < 160  # 30% of 400 pictures hold a box


def test_vcr_right_answers_agree_with_the_pictures(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    root = out / "base" / "vcr"
    checked = 0
    for split in ("train", "val"):
        for line in (root / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            meta = json.loads((root / "vcr1images" / row["metadata_fn"]).read_text())
            seen = {s.position: s for s in read_picture(root / "vcr1images" / row["img_fn"])}
            # Each object's box centre is in its quadrant; the picture shows it there, of its kind.
            where = [POSITIONS[2 * ((y1 + y2) / 2 > 32) + ((x1 + x2) / 2 > 32)] for x1, y1, x2, y2, _ in meta["boxes"]]
            assert [seen[p].kind for p in where] == row["objects"] and len(seen) == len(where)
            answer = " ".join(str(t) for t in row["answer_choices"][row["answer_label"]])
            # "[0] is red .", "No , [0] is red and [1] is blue .", "Yes , [0] and [1] are both red ."
            facts = [(int(i), c) for i, c in re.findall(rf"\[(\d)\] (?:is|are both) ({_C})\b", answer)]
            facts += [(int(i), c) for i, _, c in re.findall(rf"\[(\d)\] and \[(\d)\] are both ({_C})", answer)]
            for i, colour in facts:
                assert seen[where[i]].colour == colour, answer
            for i, position in re.findall(rf"\[(\d)\] is at the ({_P}) \.", answer):
                assert where[int(i)] == position, answer
            checked += bool(facts) or "at the" in answer
    assert checked > 30
