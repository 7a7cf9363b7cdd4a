"""NLVR2 reader: golden round trip on the train directory layout and dev flat layout; defects by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vldistill.data.check import check_dataset
from vldistill.data.readers import read_nlvr2, read_task
from vldistill.data.records import NLVR2Record
from vldistill.errors import ConfigError

FILE = "train.json"


def test_golden_round_trip_train_directories(nlvr2_root: Path) -> None:
    records = read_nlvr2(nlvr2_root, "train")
    images = nlvr2_root.absolute() / "images" / "train"
    assert records[0] == NLVR2Record(
        identifier="train-10171-0-0",
        sentence="An image shows one leather pencil case.",
        label=False,
        left_image=images / "13" / "train-10171-0-img0.png",
        right_image=images / "13" / "train-10171-0-img1.png",
    )
    assert [r.label for r in records] == [False, True, True]
    assert records[2].right_image == images / "0" / "train-2-1-img1.png"


DEV = {"identifier": "dev-850-0-1", "sentence": "One dog.", "label": "True", "left_url": "u", "right_url": "v"}


@pytest.mark.parametrize(
    ("folders", "expected"),
    [
        ((), "dev"),  # nothing extracted yet: where dev_img.zip extracts, so "not found" names it
        (("dev",), "dev"),  # the official archive's layout
        (("images/dev",), "images/dev"),  # the layout the generated world writes
        (("images/dev", "dev"), "images/dev"),
    ],
)
def test_dev_images_where_the_archive_puts_them(nlvr2_root: Path, folders: tuple[str, ...], expected: str) -> None:
    (nlvr2_root / "dev.json").write_text(json.dumps(DEV) + "\n")
    for folder in folders:
        (nlvr2_root / folder).mkdir(parents=True)
    (record,) = read_nlvr2(nlvr2_root, "dev")
    assert record.left_image == nlvr2_root.absolute() / expected / "dev-850-0-img0.png"
    assert record.right_image == nlvr2_root.absolute() / expected / "dev-850-0-img1.png"


def test_train_directories_under_either_folder(nlvr2_root: Path) -> None:
    (nlvr2_root / "images").rename(nlvr2_root / "moved")
    assert read_nlvr2(nlvr2_root, "train")[2].left_image == nlvr2_root.absolute() / "images/train/0/train-2-1-img0.png"
    (nlvr2_root / "moved" / "train").rename(nlvr2_root / "train")
    assert read_nlvr2(nlvr2_root, "train")[2].left_image == nlvr2_root.absolute() / "train/0/train-2-1-img0.png"


def test_official_dev_and_test1_layout_passes_data_check(tmp_path: Path) -> None:
    """dev_img.zip and test1_img.zip extract to ROOT/dev/ and ROOT/test1/: every image is found."""
    root = tmp_path / "nlvr2"
    for split in ("dev", "test1"):
        row = dict(DEV, identifier=f"{split}-850-0-1")
        root.mkdir(exist_ok=True)
        (root / f"{split}.json").write_text(json.dumps(row) + "\n")
        for side in ("img0", "img1"):
            (root / split).mkdir(exist_ok=True)
            Image.new("RGB", (8, 6)).save(root / split / f"{split}-850-0-{side}.png")
        assert check_dataset("nlvr2", root, split)["images"] == 2


def test_hidden_test_has_no_labels(nlvr2_root: Path) -> None:
    hidden = {"identifier": "test2-7-1-0", "sentence": "Two cats."}
    (nlvr2_root / "test2.json").write_text(json.dumps(hidden) + "\n")
    assert read_nlvr2(nlvr2_root, "test2")[0].label is None


@pytest.mark.parametrize("split", ["../dev", "dev/x", "", ".."])
def test_split_must_be_a_plain_name(nlvr2_root: Path, split: str) -> None:
    with pytest.raises(ConfigError, match="is not a plain name; fix: use train, dev, test1 or test2"):
        read_nlvr2(nlvr2_root, split)


def test_label_must_be_the_string(nlvr2_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(nlvr2_root / FILE, 1, lambda row: row.update(label=True))
    data_error(
        lambda: read_nlvr2(nlvr2_root, "train"),
        file=FILE,
        record="line 2 (identifier train-10171-0-1)",
        problem="field 'label' is a boolean (true), expected a string",
    )


def test_bad_label_value(nlvr2_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(nlvr2_root / FILE, 2, lambda row: row.update(label="yes"))
    data_error(lambda: read_nlvr2(nlvr2_root, "train"), file=FILE, record="line 3", problem="label is 'yes'")


def test_identifier_of_another_split(nlvr2_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(nlvr2_root / FILE, 0, lambda row: row.update(identifier="dev-1-0-0"))
    data_error(
        lambda: read_nlvr2(nlvr2_root, "train"),
        file=FILE,
        record="line 1 (identifier dev-1-0-0)",
        problem="is not 'train-<set>-<pair>-<sentence>'",
    )


def test_mistyped_directory(nlvr2_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(nlvr2_root / FILE, 2, lambda row: row.update(directory="0"))
    data_error(
        lambda: read_nlvr2(nlvr2_root, "train"),
        file=FILE,
        record="line 3",
        problem="field 'directory' is a string (\"0\"), expected an integer",
    )


def test_empty_sentence(nlvr2_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(nlvr2_root / FILE, 0, lambda row: row.update(sentence=""))
    data_error(
        lambda: read_nlvr2(nlvr2_root, "train"),
        file=FILE,
        record="line 1",
        problem="field 'sentence' is empty",
    )


def test_line_not_an_object(nlvr2_root: Path, data_error) -> None:
    path = nlvr2_root / FILE
    path.write_text(path.read_text() + "[1, 2]\n")
    data_error(lambda: read_nlvr2(nlvr2_root, "train"), file=FILE, record="line 4", problem="expected a JSON object")


def test_unknown_task(nlvr2_root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task 'gqa'; fix: use one of vqa, snli_ve, vcr, nlvr2"):
        read_task("gqa", nlvr2_root, "train")
