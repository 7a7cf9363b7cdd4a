"""Small hand-written datasets in the publishers' exact layouts, written to ``tmp_path``, and the
generated world the world tests share.

Each ``<task>_root`` fixture writes 2-4 records and their images and returns the dataset root;
``edit_json`` / ``edit_jsonl`` let a test break one record; ``world`` is generated once per session.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vldistill.data.world import generate_world
from vldistill.errors import DataError

WORLD_SCALE = 0.05
"""Scale of the shared ``world``: 300 / 75 VQA questions, 300 / 38 / 75 SNLI-VE hypotheses, 30 / 10 VCR
questions, 15 / 5 NLVR2 sets (30 / 10 statements), 400 captions per style."""


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The generated world of both styles at :data:`WORLD_SCALE`, seed 0: ``(folder, counts)``."""
    out = tmp_path_factory.mktemp("world")
    return out, generate_world(out, style="both", seed=0, scale=WORLD_SCALE)


def write_image(path: Path, size: tuple[int, int] = (8, 6)) -> None:
    """A tiny valid image; the format follows the suffix (.jpg JPEG, .png PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _answers(words: list[str]) -> list[dict[str, Any]]:
    return [{"answer": w, "answer_confidence": "yes", "answer_id": k + 1} for k, w in enumerate(words)]


VQA_QUESTIONS = [
    {"image_id": 9, "question": "What color is the ball?", "question_id": 9000},
    {"image_id": 9, "question": "How many balls are there?", "question_id": 9001},
    {"image_id": 25, "question": "Is it sunny?", "question_id": 25000},
]
VQA_ANNOTATIONS = [
    {
        "question_id": 9001,
        "image_id": 9,
        "question_type": "how many",
        "answer_type": "number",
        "multiple_choice_answer": "2",
        "answers": _answers(["2"] * 9 + ["two"]),
    },
    {
        "question_id": 9000,
        "image_id": 9,
        "question_type": "what color is the",
        "answer_type": "other",
        "multiple_choice_answer": "red",
        "answers": _answers(["red"] * 8 + ["dark red", "orange"]),
    },
    {
        "question_id": 25000,
        "image_id": 25,
        "question_type": "is it",
        "answer_type": "yes/no",
        "multiple_choice_answer": "yes",
        "answers": _answers(["yes"] * 10),
    },
]


@pytest.fixture
def vqa_root(tmp_path: Path) -> Path:
    """VQA v2 train2014: 3 questions on 2 COCO images, with annotations (given out of order)."""
    root = tmp_path / "vqa"
    root.mkdir()
    common = {"info": {"version": "2.0"}, "license": {"name": "CC BY 4.0"}, "data_type": "mscoco"}
    questions = common | {"task_type": "Open-Ended", "data_subtype": "train2014", "questions": VQA_QUESTIONS}
    annotations = common | {"data_subtype": "train2014", "annotations": VQA_ANNOTATIONS}
    (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps(questions), encoding="utf-8")
    (root / "v2_mscoco_train2014_annotations.json").write_text(json.dumps(annotations), encoding="utf-8")
    for image_id in (9, 25):
        write_image(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
    return root


SNLI_VE_ROWS = [
    {
        "Flickr30K_ID": "3416050480",
        "gold_label": "entailment",
        "pairID": "3416050480.jpg#4r1e",
        "captionID": "3416050480.jpg#4",
        "sentence1": "A man in a black shirt plays a guitar.",
        "sentence2": "The man is playing music.",
        "annotator_labels": ["entailment"],
        "sentence1_parse": "(ROOT ...)",
        "sentence2_parse": "(ROOT ...)",
    },
    {
        "Flickr30K_ID": "3416050480",
        "gold_label": "contradiction",
        "pairID": "3416050480.jpg#4r1c",
        "captionID": "3416050480.jpg#4",
        "sentence1": "A man in a black shirt plays a guitar.",
        "sentence2": "The man is sleeping.",
        "annotator_labels": ["contradiction", "contradiction"],
    },
    {
        "Flickr30K_ID": "1000092795",
        "gold_label": "neutral",
        "pairID": "1000092795.jpg#0r1n",
        "captionID": "1000092795.jpg#0",
        "sentence1": "Two young guys are outside.",
        "sentence2": "Two friends wait for a bus.",
        "annotator_labels": ["neutral"],
    },
]


@pytest.fixture
def snli_ve_root(tmp_path: Path) -> Path:
    """SNLI-VE train: 3 pairs over 2 Flickr30K images."""
    root = tmp_path / "snli_ve"
    root.mkdir()
    write_jsonl(root / "snli_ve_train.jsonl", SNLI_VE_ROWS)
    for flickr_id in ("3416050480", "1000092795"):
        write_image(root / "flickr30k_images" / f"{flickr_id}.jpg")
    return root


MOVIE = "lsmdc_3015_CHARLIE_ST_CLOUD"
FRAME = "3015_CHARLIE_ST_CLOUD_00.23.57.935-00.24.00.783@0"
VCR_ROWS = [
    {
        "movie": "3015_CHARLIE_ST_CLOUD",
        "objects": ["person", "person", "car"],
        "interesting_scores": [0],
        "answer_likelihood": "possible",
        "img_fn": f"{MOVIE}/{FRAME}.jpg",
        "metadata_fn": f"{MOVIE}/{FRAME}.json",
        "answer_orig": "No she does not",
        "question_orig": "Does 1 feel comfortable?",
        "rationale_orig": "She is standing with her arms crossed",
        "question": ["Does", [0], "feel", "comfortable", "?"],
        "answer_match_iter": [2, 3, 0, 1],
        "answer_sources": [3287, 0, 10184, 2260],
        "answer_choices": [
            ["Yes", "because", "the", "person", "sitting", "next", "to", "her", "is", "smiling", "."],
            ["No", "she", "does", "not", "."],
            ["Yes", ",", [0, 1], "are", "friends", "."],
            ["Yes", ",", "she", "likes", [2], "."],
        ],
        "answer_label": 1,
        "rationale_choices": [
            ["She", "is", "standing", "with", "her", "arms", "crossed", "."],
            [[1], "is", "laughing", "."],
            ["She", "is", "driving", [2], "."],
            ["Nobody", "is", "here", "."],
        ],
        "rationale_label": 0,
        "rationale_sources": [1921, 0, 9750, 25743],
        "rationale_match_iter": [3, 0, 2, 1],
        "split": "train",
        "question_number": 0,
        "img_id": "train-0",
        "annot_id": "train-0",
    },
    {
        "movie": "3015_CHARLIE_ST_CLOUD",
        "objects": ["person", "person", "car"],
        "img_fn": f"{MOVIE}/{FRAME}.jpg",
        "metadata_fn": f"{MOVIE}/{FRAME}.json",
        "question": ["What", "is", [1, 0], "doing", "?"],
        "answer_choices": [["Talking", "."], ["Running", "."], ["Driving", [2], "."], ["Eating", "."]],
        "answer_label": 0,
        "rationale_choices": [
            [[0], "is", "speaking", "."],
            ["Their", "legs", "move", "."],
            ["Keys", "."],
            ["Food", "."],
        ],
        "rationale_label": 0,
        "split": "train",
        "question_number": 1,
        "img_id": "train-0",
        "annot_id": "train-1",
    },
]
VCR_METADATA = {
    "boxes": [[10.0, 12.5, 40.0, 60.0, 0.99], [45, 10, 70, 58, 0.97], [0, 30, 20, 48, 0.8]],
    "names": ["person", "person", "car"],
    "width": 80,
    "height": 64,
    "segms": [
        [[[10, 12], [40, 12], [40, 60]]],
        [[[45, 10], [70, 58], [45, 58]]],
        [[[0, 30], [20, 48], [0, 48]]],
    ],
}


@pytest.fixture
def vcr_root(tmp_path: Path) -> Path:
    """VCR train: 2 questions on one movie frame with 3 objects, references in every field."""
    root = tmp_path / "vcr"
    root.mkdir()
    write_jsonl(root / "train.jsonl", VCR_ROWS)
    write_image(root / "vcr1images" / MOVIE / f"{FRAME}.jpg", (80, 64))
    (root / "vcr1images" / MOVIE / f"{FRAME}.json").write_text(json.dumps(VCR_METADATA), encoding="utf-8")
    return root


NLVR2_ROWS = [
    {
        "identifier": "train-10171-0-0",
        "sentence": "An image shows one leather pencil case.",
        "label": "False",
        "directory": 13,
        "left_url": "https://example.org/l.jpg",
        "right_url": "https://example.org/r.jpg",
        "synset": "pencil case",
        "query": "pencil case 7",
        "writer": "103",
        "validation": {"131": "True"},
        "extra_validations": {},
    },
    {
        "identifier": "train-10171-0-1",
        "sentence": "There are exactly two pencil cases.",
        "label": "True",
        "directory": 13,
        "left_url": "https://example.org/l.jpg",
        "right_url": "https://example.org/r.jpg",
        "synset": "pencil case",
        "query": "pencil case 7",
        "writer": "103",
    },
    {
        "identifier": "train-2-1-0",
        "sentence": "Two dogs sit on grass.",
        "label": "True",
        "directory": 0,
        "left_url": "https://example.org/a.jpg",
        "right_url": "https://example.org/b.jpg",
        "synset": "dog",
        "query": "dog 3",
        "writer": "88",
    },
]


@pytest.fixture
def nlvr2_root(tmp_path: Path) -> Path:
    """NLVR2 train (directory layout): 3 statements over 2 image pairs."""
    root = tmp_path / "nlvr2"
    root.mkdir()
    write_jsonl(root / "train.json", NLVR2_ROWS)
    for directory, stem in ((13, "train-10171-0"), (0, "train-2-1")):
        for side in ("img0", "img1"):
            write_image(root / "images" / "train" / str(directory) / f"{stem}-{side}.png")
    return root


@pytest.fixture
def edit_jsonl() -> Callable[[Path, int, Callable[[dict[str, Any]], None]], None]:
    """``edit(path, index, change)``: apply ``change`` to the object on line ``index + 1`` and rewrite."""

    def edit(path: Path, index: int, change: Callable[[dict[str, Any]], None]) -> None:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        change(rows[index])
        write_jsonl(path, rows)

    return edit


@pytest.fixture
def edit_json() -> Callable[[Path, Callable[[Any], None]], None]:
    """``edit(path, change)``: apply ``change`` to a whole JSON file's value and rewrite."""

    def edit(path: Path, change: Callable[[Any], None]) -> None:
        value = json.loads(path.read_text(encoding="utf-8"))
        change(value)
        path.write_text(json.dumps(value), encoding="utf-8")

    return edit


@pytest.fixture
def data_error() -> Callable[..., DataError]:
    """``data_error(call, file=, record=, problem=)``: ``call()`` must raise one DataError line naming them.

    ``file`` is the file's name, ``record`` a substring of the record (``None``: a file-level error),
    ``problem`` a substring of the problem.
    """

    def check(call: Callable[[], object], *, file: str, record: str | None, problem: str) -> DataError:
        with pytest.raises(DataError) as info:
            call()
        err = info.value
        assert Path(err.file).name == file
        if record is None:
            assert err.record is None
        else:
            assert err.record is not None and record in err.record, err.record
        assert problem in err.problem, err.problem
        assert err.fix and "\n" not in str(err)
        return err

    return check
