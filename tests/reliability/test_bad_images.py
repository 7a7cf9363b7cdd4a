"""Bad images in training: dropped before the first step with ``data.skip_bad``, else one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reliability.corpus_files import assert_one_line_error, run_cli, write_config, write_snli_ve
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.data.loader import ExampleDataset, ImageReadError, examples_with_images
from vldistill.training.experiment import load_data


def _tree(root: Path, **data) -> dict:
    return tiny_tree(
        "snli_ve",
        data={"root": str(root), "max_train": None, "max_eval": None, "world_scale": 1.0, **data},
        train={"batch_size": 2, "eval_batch_size": 2},
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """SNLI-VE train, dev and test, four pairs each: pairs 0 and 2 show image 100, pairs 1 and 3 image 101."""
    return write_snli_ve(tmp_path / "snli", ("train", "dev", "test"))


@pytest.mark.parametrize("defect", ["missing", "corrupt"])
def test_skip_bad_drops_the_examples_of_a_bad_image_before_training_and_says_so_once(
    defect: str, root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    image = root / "flickr30k_images" / "101.jpg"
    image.unlink() if defect == "missing" else image.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 4)
    config = write_config(tmp_path / "skip.yaml", _tree(root, skip_bad=True))
    result = run_cli(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"], monkeypatch, capsys)
    assert result.code == 0, result.err[-2000:]
    problem = "image not found" if defect == "missing" else "image cannot be read"
    for split in ("snli_ve train", "snli_ve dev (dev)", "snli_ve test (eval)"):
        assert result.err.count(f"warning: skipped 2 example(s) of {split} for bad images:") == 1, result.err
    assert result.err.count(f"  {image}: {problem}") == 3  # once for train, dev (selection) and test (evaluation)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_examples"] == 2 and summary["steps"] == 1  # pairs 0 and 2, one batch of 2
    manifest = json.loads((tmp_path / "run" / "subset.json").read_text())
    assert manifest["ids"] == ["100.jpg#train0", "100.jpg#train2"]


def test_without_skip_bad_a_missing_image_is_one_line_naming_it_and_the_fix(root: Path, tmp_path, monkeypatch, capsys):
    (root / "flickr30k_images" / "101.jpg").unlink()
    config = write_config(tmp_path / "strict.yaml", _tree(root))
    result = run_cli(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"], monkeypatch, capsys)
    assert_one_line_error(
        result, ("101.jpg", "image of example 101.jpg#train1 (snli_ve train)", "image not found", "data.skip_bad: true")
    )
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any step


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_met_in_a_batch_is_one_line_even_from_a_worker(root: Path, workers: int) -> None:
    (root / "flickr30k_images" / "101.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 4)
    data = load_data(parse_config(_tree(root), "t").data)  # exists, so it passes the cheap check
    loader = torch.utils.data.DataLoader(
        ExampleDataset(data.train), batch_size=4, num_workers=workers, collate_fn=lambda items: items
    )
    with pytest.raises(ImageReadError) as err:
        next(iter(loader))
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{root / 'flickr30k_images' / '101.jpg'}: cannot read image (")
    assert message.endswith("; fix: replace the file, or set data.skip_bad: true to drop the examples whose images "
                            "are missing or unreadable")  # fmt: skip


def test_examples_with_images_keeps_the_order_of_the_good_ones(root: Path) -> None:
    data = load_data(parse_config(_tree(root), "t").data)
    (root / "flickr30k_images" / "100.jpg").unlink()
    kept = examples_with_images(data.train, skip_bad=True, where="t", report=False)
    assert [ex.uid for ex in kept] == ["101.jpg#train1", "101.jpg#train3"]
