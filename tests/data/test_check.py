"""``check_dataset`` counts on good datasets, image defects, and ``vldistill data check`` end to end."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from vldistill.data.check import DatasetDefects, check_dataset

VLDISTILL = Path(sys.executable).parent / "vldistill"


def test_counts_vqa(vqa_root: Path) -> None:
    assert check_dataset("vqa", vqa_root, "train2014") == {
        "records": 3,
        "images": 2,
        "answers": 30,
        "answer_type.number": 1,
        "answer_type.other": 1,
        "answer_type.yes/no": 1,
    }


def test_counts_snli_ve(snli_ve_root: Path) -> None:
    assert check_dataset("snli_ve", snli_ve_root, "train") == {
        "records": 3,
        "images": 2,
        "labels.entailment": 1,
        "labels.neutral": 1,
        "labels.contradiction": 1,
    }


def test_counts_vcr(vcr_root: Path) -> None:
    assert check_dataset("vcr", vcr_root, "train") == {
        "records": 2,
        "images": 1,
        "objects": 6,
        "answer_choices": 8,
        "rationale_choices": 8,
        "labelled": 2,
    }


def test_counts_nlvr2(nlvr2_root: Path) -> None:
    assert check_dataset("nlvr2", nlvr2_root, "train") == {
        "records": 3,
        "images": 4,
        "labels.True": 2,
        "labels.False": 1,
        "labels.missing": 0,
    }


def test_missing_image_names_the_record(nlvr2_root: Path, data_error) -> None:
    (nlvr2_root / "images" / "train" / "0" / "train-2-1-img1.png").unlink()
    data_error(
        lambda: check_dataset("nlvr2", nlvr2_root, "train"),
        file="train-2-1-img1.png",
        record="image of identifier train-2-1-0",
        problem="image not found",
    )


def test_truncated_jpeg(snli_ve_root: Path, data_error) -> None:
    path = snli_ve_root / "flickr30k_images" / "1000092795.jpg"
    path.write_bytes(path.read_bytes()[:200])
    data_error(
        lambda: check_dataset("snli_ve", snli_ve_root, "train"),
        file="1000092795.jpg",
        record="image of pairID 1000092795.jpg#0r1n",
        problem="image cannot be read",
    )


def test_corrupt_png(nlvr2_root: Path, data_error) -> None:
    path = nlvr2_root / "images" / "train" / "13" / "train-10171-0-img0.png"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # flips a byte of the last chunk: its CRC no longer matches
    path.write_bytes(bytes(data))
    data_error(
        lambda: check_dataset("nlvr2", nlvr2_root, "train"),
        file="train-10171-0-img0.png",
        record="identifier train-10171-0-0",
        problem="image cannot be read",
    )


def _claim_size(path: Path, width: int, height: int) -> None:
    """Rewrite a PNG's header to claim ``width x height`` (the pixel data stays tiny)."""
    data = bytearray(path.read_bytes())
    body = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = body
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + body))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("side", [7_000, 20_000])  # above our 40 MP limit; above PIL's own bomb limit
def test_decompression_bomb(nlvr2_root: Path, data_error, side: int) -> None:
    _claim_size(nlvr2_root / "images" / "train" / "0" / "train-2-1-img0.png", side, side)
    data_error(
        lambda: check_dataset("nlvr2", nlvr2_root, "train"),
        file="train-2-1-img0.png",
        record="image of identifier train-2-1-0",
        problem="decompression bomb",
    )


def test_empty_split(nlvr2_root: Path, data_error) -> None:
    (nlvr2_root / "train.json").write_text("\n")
    data_error(lambda: check_dataset("nlvr2", nlvr2_root, "train"), file="nlvr2", record=None, problem="no records")


def test_every_defect_is_found_in_file_order(nlvr2_root: Path, edit_jsonl) -> None:
    """Two bad annotation lines, a missing image and a corrupt one: four defects, none hidden by another."""
    edit_jsonl(nlvr2_root / "train.json", 0, lambda row: row.update(label="yes"))
    edit_jsonl(nlvr2_root / "train.json", 2, lambda row: row.update(sentence=""))
    (nlvr2_root / "images" / "train" / "13" / "train-10171-0-img1.png").unlink()
    (nlvr2_root / "images" / "train" / "13" / "train-10171-0-img0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetDefects) as info:
        check_dataset("nlvr2", nlvr2_root, "train")
    found = [(Path(d.file).name, d.record, d.problem) for d in info.value.defects]
    assert found == [
        ("train.json", "line 1 (identifier train-10171-0-0)", "label is 'yes'"),
        ("train.json", "line 3 (identifier train-2-1-0)", "field 'sentence' is empty"),
        ("train-10171-0-img0.png", "image of identifier train-10171-0-1", found[2][2]),
        ("train-10171-0-img1.png", "image of identifier train-10171-0-1", "image not found"),
    ]
    assert found[2][2].startswith("image cannot be read")
    assert info.value.lines() == [str(d) for d in info.value.defects]
    # the error itself is the first defect, so callers that expect one DataError still read it
    assert (info.value.record, info.value.problem) == found[0][1:]


def _nlvr2_without_images(root: Path, statements: int) -> Path:
    rows = [{"identifier": f"dev-{k}-0-0", "sentence": "Two dogs.", "label": "True"} for k in range(statements)]
    root.mkdir()
    (root / "dev.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def test_lines_stop_at_shown_then_count_the_rest(tmp_path: Path) -> None:
    root = _nlvr2_without_images(tmp_path / "nlvr2", 13)  # 26 missing images
    with pytest.raises(DatasetDefects) as info:
        check_dataset("nlvr2", root, "dev", shown=20)
    lines = info.value.lines()
    assert len(info.value.defects) == 26 and len(lines) == 21
    assert lines[0] == (
        f"{root.absolute() / 'dev' / 'dev-0-0-img0.png'}: image of identifier dev-0-0-0: image not found; "
        f"fix: download and extract the images into {root.absolute() / 'dev'}"
    )
    assert lines[-1] == (
        "and 6 more defects (26 in all); fix: correct those above and run `vldistill data check` again, "
        "or pass --show N"
    )


def test_cli_prints_every_defect_one_line_each_and_exits_2(vcr_root: Path, edit_jsonl) -> None:
    edit_jsonl(vcr_root / "train.jsonl", 0, lambda row: row["question"].append([9]))
    edit_jsonl(vcr_root / "train.jsonl", 1, lambda row: row["question"].append([7]))
    result = subprocess.run(
        [str(VLDISTILL), "data", "check", "vcr", str(vcr_root), "--split", "train"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert lines[0].startswith(f"error: {vcr_root / 'train.jsonl'}: line 1 (annot_id train-0): question[")
    assert lines[1].startswith(f"error: {vcr_root / 'train.jsonl'}: line 2 (annot_id train-1): question[5] refers")


def test_cli_show_limits_the_lines(tmp_path: Path) -> None:
    root = _nlvr2_without_images(tmp_path / "nlvr2", 3)  # 6 missing images
    result = subprocess.run(
        [str(VLDISTILL), "data", "check", "nlvr2", str(root), "--split", "dev", "--show", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 3
    assert all(line.startswith("error: ") for line in lines)
    assert lines[2].startswith("error: and 4 more defects (6 in all); fix:")
