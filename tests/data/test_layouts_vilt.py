"""ViLT's / DiDE's Arrow layout: the generated world's splits written as ViLT's scripts write them, read back.

Records must carry what the official files say (VQA v2: the same official accuracy for every answer),
images come from the memory-mapped file one cell at a time, every defect is one line naming the file and
the row, and a VQA v2 root in this layout passes ``data check`` and trains.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from layout_writers import run_cli, write_vilt_nlvr2, write_vilt_snli_ve, write_vilt_vqa
from tiny_configs import tiny_tree

from vldistill.data.check import DatasetDefects, check_dataset
from vldistill.data.images import StoredImage, image_bytes
from vldistill.data.loader import ImageReadError, decode_image
from vldistill.data.readers import read_task
from vldistill.data.records import VQARecord
from vldistill.data.tasks import ExampleBuilder
from vldistill.metrics.vqa import question_accuracy


@pytest.fixture(scope="module")
def vilt_root(caption_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world's VQA v2 train2014 and val2014, SNLI-VE dev and NLVR2 dev, in ViLT's Arrow layout."""
    base, out = caption_world / "base", tmp_path_factory.mktemp("vilt")
    write_vilt_vqa(base / "vqa", "train2014", out)
    write_vilt_vqa(base / "vqa", "val2014", out)
    write_vilt_snli_ve(base / "snli_ve", "dev", out)
    write_vilt_nlvr2(base / "nlvr2", "dev", out)
    return out


def _bytes(ref: Path | StoredImage) -> bytes:
    return ref.read_bytes() if isinstance(ref, Path) else image_bytes(ref)


def test_vqa_records_and_official_scores_equal_the_official_layouts(caption_world: Path, vilt_root: Path) -> None:
    official = read_task("vqa", caption_world / "base" / "vqa", "val2014")
    vilt = read_task("vqa", vilt_root, "val2014")  # the official split name finds vqav2_val.arrow
    assert len(vilt) == len(official) == 28
    by_id = {r.question_id: r for r in vilt}
    assert set(by_id) == {r.question_id for r in official}
    for o in official:
        v = by_id[o.question_id]
        assert (v.image_id, v.question) == (o.image_id, o.question)
        assert _bytes(v.image_path) == _bytes(o.image_path)
    # Scores are recomputed by the official metric from the rebuilt annotators: the same soft targets ...
    ours, theirs = ExampleBuilder("vqa", official)(official), ExampleBuilder("vqa", vilt)(vilt)
    # (to float rounding: the leave-one-out mean sums the ten annotators in another order)
    expected = {e.uid: e.soft_label for e in ours}
    assert {e.uid: e.soft_label.keys() for e in theirs} == {uid: labels.keys() for uid, labels in expected.items()}
    assert all(e.soft_label == pytest.approx(expected[e.uid]) for e in theirs)
    # ... and the same official accuracy for any predicted answer of the vocabulary.
    vocabulary = ExampleBuilder("vqa", official).answers
    for o in official:
        gold = [{"answer": a.answer, "answer_id": a.answer_id} for a in o.answers]
        rebuilt = [{"answer": a.answer, "answer_id": a.answer_id} for a in by_id[o.question_id].answers]
        expected = [question_accuracy(a, gold) for a in vocabulary]
        assert [question_accuracy(a, rebuilt) for a in vocabulary] == pytest.approx(expected)


def test_snli_ve_and_nlvr2_records_carry_the_official_fields(caption_world: Path, vilt_root: Path) -> None:
    base = caption_world / "base"
    official, vilt = read_task("snli_ve", base / "snli_ve", "dev"), read_task("snli_ve", vilt_root, "dev")
    assert [(r.flickr30k_id, r.hypothesis, r.gold_label) for r in vilt] == [
        (r.flickr30k_id, r.hypothesis, r.gold_label) for r in official
    ]
    assert vilt[0].pair_id == f"{vilt[0].flickr30k_id}#0"  # DiDE's files keep no pairID
    assert _bytes(vilt[-1].image_path) == _bytes(official[-1].image_path)
    official, vilt = read_task("nlvr2", base / "nlvr2", "dev"), read_task("nlvr2", vilt_root, "dev")
    assert [(r.identifier, r.sentence, r.label) for r in vilt] == [
        (r.identifier, r.sentence, r.label) for r in official
    ]
    assert [_bytes(vilt[1].left_image), _bytes(vilt[1].right_image)] == [
        _bytes(official[1].left_image),
        _bytes(official[1].right_image),
    ]


def test_records_are_read_memory_mapped_and_images_one_cell_at_a_time(vilt_root: Path) -> None:
    size = (vilt_root / "vqav2_train.arrow").stat().st_size
    before = pa.total_allocated_bytes()
    records = read_task("vqa", vilt_root, "train2014")
    assert len(records) == 112
    # The text columns are read in place from the memory map; the images (nearly all of the file) are not copied.
    assert pa.total_allocated_bytes() - before < size // 10
    assert decode_image(records[7].image_path).size == (64, 64)


def test_data_check_counts_a_vqa_split_given_by_vilt_name(vilt_root: Path, monkeypatch, capsys) -> None:
    counts = check_dataset("vqa", vilt_root, "val")
    assert (counts["records"], counts["images"], counts["answers"]) == (28, 28, 280)
    assert run_cli(monkeypatch, "data", "check", "vqa", str(vilt_root), "--split", "val", "--format", "vilt_arrow") == 0
    assert "records: 28" in capsys.readouterr().out


def _rewrite(path: Path, change) -> None:
    """Rewrite an Arrow IPC file with ``change(columns)`` applied to its columns (a dict of Python lists)."""
    with pa.memory_map(str(path)) as source:
        columns = pa.ipc.open_file(source).read_all().to_pydict()
    change(columns)
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


@pytest.fixture
def nlvr2_copy(vilt_root: Path, tmp_path: Path) -> Path:
    """A private copy of the NLVR2 dev file, to break."""
    (tmp_path / "nlvr2_dev.arrow").write_bytes((vilt_root / "nlvr2_dev.arrow").read_bytes())
    return tmp_path


def test_a_truncated_file_is_one_line_and_exit_2(nlvr2_copy: Path, monkeypatch, capsys, data_error) -> None:
    path = nlvr2_copy / "nlvr2_dev.arrow"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    data_error(lambda: read_task("nlvr2", nlvr2_copy, "dev"), file=path.name, record=None, problem="truncated?")
    assert run_cli(monkeypatch, "data", "check", "nlvr2", str(nlvr2_copy), "--split", "dev") == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not a complete Arrow IPC file")


def test_a_missing_column_names_it_and_the_writer(nlvr2_copy: Path, data_error) -> None:
    _rewrite(nlvr2_copy / "nlvr2_dev.arrow", lambda columns: columns.pop("questions"))
    err = data_error(
        lambda: read_task("nlvr2", nlvr2_copy, "dev"), file="nlvr2_dev.arrow", record=None, problem="'questions'"
    )
    assert "write_nlvr2.py" in err.fix


def test_undecodable_and_empty_images_are_named_by_row(nlvr2_copy: Path, monkeypatch, capsys) -> None:
    def damage(columns: dict) -> None:
        columns["image_1"][1] = b"\x89PNG not really"
        columns["image_0"][3] = b""

    path = nlvr2_copy / "nlvr2_dev.arrow"
    _rewrite(path, damage)
    with pytest.raises(DatasetDefects) as info:
        check_dataset("nlvr2", nlvr2_copy, "dev")
    lines = info.value.lines()
    assert lines[0].startswith(f"{path}: row 3 (identifier dev-1-1): column 'image_0' holds no image bytes; fix:")
    assert lines[1].startswith(f"{path} (row 1, column 'image_1'): image of identifier dev-0-1-0: image cannot be read")
    assert len(lines) == 2
    records = read_task("nlvr2", nlvr2_copy, "dev", skip_bad=True)
    with pytest.raises(ImageReadError, match=r"row 1, column 'image_1'\): cannot read image"):
        decode_image(records[1].right_image)
    assert run_cli(monkeypatch, "data", "check", "nlvr2", str(nlvr2_copy), "--split", "dev") == 2
    assert len(capsys.readouterr().err.splitlines()) == 2


def test_a_score_no_annotator_count_gives_is_refused(vilt_root: Path, tmp_path: Path, data_error) -> None:
    (tmp_path / "vqav2_val.arrow").write_bytes((vilt_root / "vqav2_val.arrow").read_bytes())
    _rewrite(tmp_path / "vqav2_val.arrow", lambda columns: columns["answer_scores"][3][0].__setitem__(0, 0.5))
    data_error(
        lambda: read_task("vqa", tmp_path, "val"),
        file="vqav2_val.arrow",
        record="row 3, question 0 (question_id",
        problem="score 0.5, which no number of the ten annotators gives",
    )
    assert isinstance(read_task("vqa", tmp_path, "val", skip_bad=True)[0], VQARecord)


def test_a_vqa_split_in_vilt_layout_trains(vilt_root: Path, tmp_path: Path, monkeypatch) -> None:
    tree = tiny_tree("vqa", data={"root": str(vilt_root), "max_train": 16, "max_eval": 8})
    config = tmp_path / "vilt.yaml"
    config.write_text(yaml.safe_dump(tree))
    assert run_cli(monkeypatch, "train", str(config), "--out", str(tmp_path / "run"), "--no-progress") == 0
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["eval"]["eval"]["vqa_accuracy"] <= 100
    assert not [k for k in summary["eval"]["eval"] if k.endswith("/")]  # no types in the file: no nameless groups


def test_dataloader_workers_open_the_file_themselves(vilt_root: Path) -> None:
    """A forked worker gets references, not the open memory map, and decodes the very same pixels."""
    import torch

    from vldistill.data.loader import ExampleDataset

    records = read_task("snli_ve", vilt_root, "dev")[:4]
    examples = ExampleBuilder("snli_ve", records)(records)
    loader = torch.utils.data.DataLoader(ExampleDataset(examples), batch_size=None, num_workers=1)
    decoded = [images[0].tobytes() for _, _, images in loader]
    assert decoded == [decode_image(r.image_path).tobytes() for r in records]


def test_the_cache_key_follows_the_files_and_keeps_official_digests(caption_world: Path, vilt_root: Path) -> None:
    import hashlib
    import os

    from vldistill.data.readers import split_digest

    root = caption_world / "base" / "vqa"
    before = hashlib.sha256()  # the digest of official roots before other layouts existed
    for f in sorted(p for p in root.iterdir() if p.is_file() and "val2014" in p.name):
        before.update(f.name.encode())
        before.update(f.read_bytes())
    assert split_digest("vqa", root, "val2014") == before.hexdigest()
    digest = split_digest("vqa", vilt_root, "val2014")
    stat = (vilt_root / "vqav2_val.arrow").stat()
    os.utime(vilt_root / "vqav2_val.arrow", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert split_digest("vqa", vilt_root, "val2014") != digest


def test_the_teacher_cache_keys_a_stored_image_by_its_bytes_and_trains_from_it(
    caption_world: Path, vilt_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A cell of the Arrow file and the official file with the same bytes are one image to the cache; a
    cached CLIP-TD run on the ViLT layout builds its cache, then trains reading it (found, not rebuilt)."""
    from vldistill.training.cache import ContentKeys

    official = {r.question_id: r for r in read_task("vqa", caption_world / "base" / "vqa", "val2014")}
    keys = ContentKeys(tmp_path)
    for v in read_task("vqa", vilt_root, "val2014")[:3]:
        assert isinstance(v.image_path, StoredImage)
        assert keys.image(v.image_path) == keys.image(official[v.question_id].image_path)
    cache = {"enabled": True, "dir": str(tmp_path / "cache")}
    tree = tiny_tree("vqa", "clip_td", ("clip",), data={"root": str(vilt_root), "max_train": 8, "max_eval": 4})
    config = tmp_path / "vilt-cached.yaml"
    config.write_text(yaml.safe_dump({**tree, "cache": cache}))
    assert run_cli(monkeypatch, "cache", "build", str(config)) == 0
    assert "8 training examples, 8 computed now; it holds " in capsys.readouterr().out
    assert run_cli(monkeypatch, "cache", "build", str(config)) == 0
    assert "8 training examples, all found in the cache; it holds " in capsys.readouterr().out
    shards = sorted(p.name for p in (tmp_path / "cache").rglob("shard-*.safetensors"))
    assert any(name.startswith("shard-img-") for name in shards)
    assert run_cli(monkeypatch, "train", str(config), "--out", str(tmp_path / "run"), "--no-progress") == 0
    assert sorted(p.name for p in (tmp_path / "cache").rglob("shard-*.safetensors")) == shards
    assert "(VQA v2, ViLT's Arrow layout)" in (tmp_path / "run" / "final" / "README.md").read_text()  # the card
