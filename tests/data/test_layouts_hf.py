"""Hugging Face ``datasets`` splits (``save_to_disk`` folders, Parquet files): the generated world's splits
written with ``datasets``, read back into the official layouts' records, with a column mapping; defects are
one line naming the file and the row; a VQA v2 split in this layout trains.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import datasets
import pytest
import yaml
from layout_writers import hf_rows, run_cli, write_hf
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.data.check import DatasetDefects, check_dataset
from vldistill.data.images import StoredImage, image_bytes
from vldistill.data.readers import DataLayout, read_task
from vldistill.errors import ConfigError

SNLI_COLUMNS = {"hypothesis": "hypothesis_text"}


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    """``load_dataset`` converts Parquet into Arrow files under ``$HF_DATASETS_CACHE``: a folder of this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
        yield


@pytest.fixture(scope="module")
def hf_roots(caption_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per task a root: VQA v2 train + validation (save_to_disk), SNLI-VE validation (Parquet, Hub layout, a
    ClassLabel and a renamed column), NLVR2 dev (save_to_disk, boolean labels)."""
    base, out = caption_world / "base", tmp_path_factory.mktemp("hf")
    write_hf("vqa", base / "vqa", "train2014", out / "vqa", name="train")
    write_hf("vqa", base / "vqa", "val2014", out / "vqa", name="validation")
    write_hf("snli_ve", base / "snli_ve", "dev", out / "snli_ve", parquet=True, name="validation")
    write_hf("nlvr2", base / "nlvr2", "dev", out / "nlvr2")
    return {task: out / task for task in ("vqa", "snli_ve", "nlvr2")}


def _without_images(record):
    images = {f.name: None for f in dataclasses.fields(record) if f.name in ("image_path", "left_image", "right_image")}
    return dataclasses.replace(record, **images)


def _bytes(ref: Path | StoredImage) -> bytes:
    return ref.read_bytes() if isinstance(ref, Path) else image_bytes(ref)


@pytest.mark.parametrize(
    ("task", "split", "columns"), [("vqa", "val2014", {}), ("snli_ve", "dev", SNLI_COLUMNS), ("nlvr2", "dev", {})]
)
def test_records_equal_the_official_layouts(caption_world, hf_roots, task: str, split: str, columns) -> None:
    official = read_task(task, caption_world / "base" / task, split)
    ours = read_task(task, hf_roots[task], split, layout=DataLayout("hf_datasets", columns))
    key = {"vqa": "question_id", "snli_ve": "pair_id", "nlvr2": "identifier"}[task]
    ours = sorted(ours, key=lambda r: getattr(r, key))
    official = sorted(official, key=lambda r: getattr(r, key))
    assert [_without_images(r) for r in ours] == [_without_images(r) for r in official]
    first, last = (ours[0], official[0]), (ours[-1], official[-1])
    for mine, theirs in (first, last):
        for attr in ("image_path", "left_image", "right_image"):
            if hasattr(mine, attr):
                assert isinstance(getattr(mine, attr), StoredImage)
                assert _bytes(getattr(mine, attr)) == _bytes(getattr(theirs, attr))


def test_data_check_maps_columns_and_names_a_missing_one(hf_roots, monkeypatch, capsys) -> None:
    root = str(hf_roots["snli_ve"])
    assert (
        run_cli(
            monkeypatch, "data", "check", "snli_ve", root, "--split", "dev", "--column", "hypothesis=hypothesis_text"
        )
        == 0
    )
    assert "records: 14" in capsys.readouterr().out
    assert run_cli(monkeypatch, "data", "check", "snli_ve", root, "--split", "dev") == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {hf_roots['snli_ve']}/data/validation-00000-of-00001")
    assert "missing column 'sentence2' for field 'hypothesis'" in lines[0] and "data.columns.hypothesis" in lines[0]
    counts = check_dataset("vqa", hf_roots["vqa"], "val2014")
    assert (counts["records"], counts["answers"], counts["answer_type.yes/no"] > 0) == (28, 280, True)


def test_an_unknown_field_in_the_mapping_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data.columns.hypotesis is not a field of snli_ve; fix: map one of"):
        parse_config(tiny_tree("snli_ve", data={"columns": {"hypotesis": "text"}}), "t")


def test_an_undecodable_image_is_named_by_file_and_row(caption_world, tmp_path: Path, monkeypatch, capsys) -> None:
    columns, features = hf_rows("nlvr2", caption_world / "base" / "nlvr2", "dev")
    columns["left_image"][1] = {"bytes": b"GIF89a broken", "path": None}
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(tmp_path / "dev"))
    capsys.readouterr()
    with pytest.raises(DatasetDefects) as info:
        check_dataset("nlvr2", tmp_path, "dev")
    (line,) = info.value.lines()
    identifier = columns["identifier"][1]
    assert line.startswith(f"{tmp_path / 'dev'} (row 1, column 'left_image'): image of identifier {identifier}: ")
    assert "image cannot be read (no image format PIL knows starts these bytes)" in line
    assert run_cli(monkeypatch, "data", "check", "nlvr2", str(tmp_path), "--split", "dev") == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_truncated_arrow_shard_is_one_line(hf_roots, tmp_path: Path, monkeypatch, capsys) -> None:
    shutil.copytree(hf_roots["nlvr2"], tmp_path / "nlvr2")
    (shard,) = (tmp_path / "nlvr2" / "dev").glob("data-*.arrow")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert run_cli(monkeypatch, "data", "check", "nlvr2", str(tmp_path / "nlvr2"), "--split", "dev") == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {tmp_path / 'nlvr2' / 'dev'}: cannot open the datasets folder (")
    assert line.endswith("fix: write it again with Dataset.save_to_disk")


def test_a_vqa_split_in_datasets_layout_trains(hf_roots, tmp_path: Path, monkeypatch) -> None:
    tree = tiny_tree(
        "vqa", data={"root": str(hf_roots["vqa"]), "format": "hf_datasets", "max_train": 16, "max_eval": 8}
    )
    config = tmp_path / "hf.yaml"
    config.write_text(yaml.safe_dump(tree))
    assert run_cli(monkeypatch, "train", str(config), "--out", str(tmp_path / "run"), "--no-progress") == 0
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["eval"]["eval"]["vqa_accuracy"] <= 100
    assert {k.split("/")[1] for k in summary["eval"]["eval"] if "/" in k} >= {"answer_type", "question_type"}
