"""Files for the reliability tests: small valid datasets in the publishers' layouts, ways to break them,
and the in-process CLI runner with the one-line-error assertion.

Each ``write_<task>`` writes two to four records and their images under a root, so a malformed copy
costs milliseconds; :func:`run_cli` runs ``vldistill ARGS`` through the console script's entry point.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from vldistill.cli import main

# ---------------------------------------------------------------------------------------------- files


def write_image(path: Path, size: tuple[int, int] = (16, 12)) -> None:
    """A small valid image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (30, 120, 200)).save(path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def edit_jsonl(path: Path, index: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to the object on line ``index + 1`` of a JSON Lines file."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    change(rows[index])
    write_jsonl(path, rows)


def edit_json(path: Path, change: Callable[[Any], None]) -> None:
    value = json.loads(path.read_text(encoding="utf-8"))
    change(value)
    path.write_text(json.dumps(value), encoding="utf-8")


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels over a few bytes of data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------------------------- valid datasets

VQA_SPLIT = "train2014"


def vqa_questions(root: Path) -> Path:
    return root / f"v2_OpenEnded_mscoco_{VQA_SPLIT}_questions.json"


def vqa_annotations(root: Path) -> Path:
    return root / f"v2_mscoco_{VQA_SPLIT}_annotations.json"


def vqa_image(root: Path, image_id: int) -> Path:
    return root / VQA_SPLIT / f"COCO_{VQA_SPLIT}_{image_id:012d}.jpg"


def write_vqa(root: Path) -> Path:
    """VQA v2 train2014: questions 100, 101 on image 7 and 200 on image 8, with annotations."""
    questions = [
        (100, 7, "What color is the cube?", "red"),
        (101, 7, "How many balls?", "2"),
        (200, 8, "Is it sunny?", "yes"),
    ]
    head = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": VQA_SPLIT}
    vqa_questions(root).parent.mkdir(parents=True, exist_ok=True)
    vqa_questions(root).write_text(
        json.dumps(
            head
            | {
                "task_type": "Open-Ended",
                "questions": [{"image_id": i, "question": q, "question_id": qid} for qid, i, q, _ in questions],
            }
        ),
        encoding="utf-8",
    )
    annotations = [
        {
            "question_id": qid,
            "image_id": i,
            "question_type": "what",
            "answer_type": "other",
            "multiple_choice_answer": a,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
        }
        for qid, i, _, a in questions
    ]
    vqa_annotations(root).write_text(json.dumps(head | {"annotations": annotations}), encoding="utf-8")
    for image_id in (7, 8):
        write_image(vqa_image(root, image_id))
    return root


def snli_ve_file(root: Path, split: str = "train") -> Path:
    return root / f"snli_ve_{split}.jsonl"


def snli_ve_rows(split: str = "train") -> list[dict[str, Any]]:
    labels = ("entailment", "neutral", "contradiction", "entailment")
    return [
        {
            "Flickr30K_ID": f"10{k % 2}",
            "gold_label": label,
            "pairID": f"10{k % 2}.jpg#{split}{k}",
            "captionID": f"10{k % 2}.jpg#0",
            "sentence1": "A dog runs on grass.",
            "sentence2": f"A dog is outside number {k}.",
        }
        for k, label in enumerate(labels)
    ]


def write_snli_ve(root: Path, splits: tuple[str, ...] = ("train",)) -> Path:
    """SNLI-VE: four pairs per split over Flickr30K images 100 and 101."""
    for split in splits:
        write_jsonl(snli_ve_file(root, split), snli_ve_rows(split))
    for flickr_id in ("100", "101"):
        write_image(root / "flickr30k_images" / f"{flickr_id}.jpg")
    return root


VCR_FRAME = "lsmdc_0001_movie/0001_movie_00.01.02.345@0"


def vcr_row(k: int) -> dict[str, Any]:
    return {
        "annot_id": f"train-{k}",
        "img_id": "train-0",
        "movie": "0001_movie",
        "split": "train",
        "objects": ["person", "person", "car"],
        "img_fn": f"{VCR_FRAME}.jpg",
        "metadata_fn": f"{VCR_FRAME}.json",
        "question": ["What", "is", [0], "doing", "?"],
        "answer_choices": [["Driving", [2], "."], ["Sleeping", "."], [[1], "waves", "."], ["Eating", "."]],
        "answer_label": 0,
        "rationale_choices": [[[0], "holds", "a", "wheel", "."], ["Dark", "."], ["Sun", "."], ["No", "."]],
        "rationale_label": 0,
    }


def write_vcr(root: Path) -> Path:
    """VCR train: two questions on one frame with three objects."""
    write_jsonl(root / "train.jsonl", [vcr_row(0), vcr_row(1)])
    write_image(root / "vcr1images" / f"{VCR_FRAME}.jpg", (64, 48))
    meta = {
        "boxes": [[1, 2, 20, 30, 0.9], [22, 2, 40, 30, 0.8], [0, 30, 60, 47, 0.7]],
        "names": ["person", "person", "car"],
        "width": 64,
        "height": 48,
    }
    (root / "vcr1images" / f"{VCR_FRAME}.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def nlvr2_rows() -> list[dict[str, Any]]:
    return [
        {
            "identifier": f"train-5-{pair}-{k}",
            "sentence": f"There are {k + 1} dogs.",
            "label": "True" if k == 0 else "False",
            "directory": 3,
            "left_url": "",
            "right_url": "",
        }
        for pair in (0, 1)
        for k in (0, 1)
    ]


def write_nlvr2(root: Path) -> Path:
    """NLVR2 train: four statements over two image pairs in directory 3."""
    write_jsonl(root / "train.json", nlvr2_rows())
    for pair in (0, 1):
        for side in ("img0", "img1"):
            write_image(root / "images" / "train" / "3" / f"train-5-{pair}-{side}.png")
    return root


# ----------------------------------------------------------------------------------------- the runner


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CliResult:
    """``vldistill ARGS`` through the console script's entry point, in this process."""
    monkeypatch.setattr(sys, "argv", ["vldistill", *args])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_one_line_error(result: CliResult, expect: tuple[str, ...], count: int = 1) -> str:
    """Exit 2, ``count`` stderr lines (one per defect, default one), each ``error: ...``, no traceback,
    and every expected string on the first line."""
    assert result.code == 2, (result.code, result.out[-2000:], result.err[-2000:])
    assert "Traceback" not in result.err + result.out
    lines = result.err.splitlines()
    assert len(lines) == count, result.err
    assert all(line.startswith("error: ") for line in lines)
    line = lines[0]
    for part in expect:
        assert part in line, f"{part!r} not in {line!r}"
    return line


def write_config(path: Path, tree: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path
