"""Every malformed input of the corpus is understood: exit 2, one stderr line naming file and record."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from reliability.bad_corpus import ALL_CASES, DATA_CASES, BadInput
from reliability.corpus_files import (
    VQA_SPLIT,
    CliResult,
    assert_one_line_error,
    edit_json,
    edit_jsonl,
    run_cli,
    snli_ve_file,
    truncate,
    vcr_row,
    vqa_annotations,
    vqa_questions,
    write_config,
    write_jsonl,
    write_nlvr2,
    write_snli_ve,
    write_vcr,
    write_vqa,
)
from tiny_configs import tiny_tree

from vldistill.cli import main
from vldistill.data.readers import read_task, read_task_report
from vldistill.errors import DataError


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda case: case.name)
def test_bad_input_exits_2_with_one_clear_line(case: BadInput, tmp_path: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "case"
    args = case.build(folder)
    assert_one_line_error(run_cli(args, monkeypatch, capsys), case.expect(folder), case.lines)


def test_corpus_covers_every_format() -> None:
    names = [case.name for case in ALL_CASES]
    assert len(names) == len(set(names)) and len(names) >= 25
    for prefix in ("vqa-", "snli_ve-", "vcr-", "nlvr2-", "config-", "score-vqa-", "report-"):
        assert sum(name.startswith(prefix) for name in names) >= 3, prefix
    assert len(DATA_CASES) >= 25


@pytest.mark.parametrize("name", ["vqa-mistyped-image-id", "config-invalid-yaml", "report-malformed-line"])
def test_console_script_prints_the_same_one_line(name: str, tmp_path: Path) -> None:
    """The real entry point in a fresh process: the same exit status and line as in process."""
    case = next(case for case in ALL_CASES if case.name == name)
    folder = tmp_path / "case"
    args = case.build(folder)
    proc = subprocess.run([sys.executable, "-m", "vldistill", *args], capture_output=True, text=True, timeout=120)
    assert_one_line_error(CliResult(proc.returncode, proc.stdout, proc.stderr), case.expect(folder), case.lines)


# ---------------------------------------------------------------------------------------- skip_bad


def _two_bad_records(task: str, root: Path) -> tuple[str, list[str]]:
    """Break two records of ``root``; return the annotation file's name and the two records' locations."""
    if task == "vqa":
        edit_json(vqa_questions(root), lambda top: top["questions"][0].__setitem__("image_id", None))
        edit_json(vqa_annotations(root), lambda top: top["annotations"][2]["answers"].pop())
        return vqa_questions(root).name, [
            "questions[0] (question_id 100)",
            "annotations[2] (question_id 200)",
        ]
    if task == "snli_ve":
        edit_jsonl(snli_ve_file(root), 1, lambda row: row.__setitem__("gold_label", "-"))
        edit_jsonl(snli_ve_file(root), 3, lambda row: row.pop("sentence2"))
        return snli_ve_file(root).name, ["line 2 (pairID 101.jpg#train1)", "line 4 (pairID 101.jpg#train3)"]
    if task == "vcr":
        write_jsonl(root / "train.jsonl", [vcr_row(k) for k in range(4)])
        edit_jsonl(root / "train.jsonl", 0, lambda row: row.__setitem__("question", [[9]]))
        edit_jsonl(root / "train.jsonl", 2, lambda row: row.__setitem__("img_fn", "../../outside.jpg"))
        return "train.jsonl", ["line 1 (annot_id train-0)", "line 3 (annot_id train-2)"]
    edit_jsonl(root / "train.json", 0, lambda row: row.__setitem__("label", "true"))
    edit_jsonl(root / "train.json", 2, lambda row: row.__setitem__("identifier", "train-x"))
    return "train.json", ["line 1 (identifier train-5-0-0)", "line 3 (identifier train-x)"]


@pytest.mark.parametrize("task", ["vqa", "snli_ve", "vcr", "nlvr2"])
def test_skip_bad_reports_how_many_and_which(task: str, tmp_path: Path) -> None:
    write = {"vqa": write_vqa, "snli_ve": write_snli_ve, "vcr": write_vcr, "nlvr2": write_nlvr2}[task]
    root = write(tmp_path / task)
    split = VQA_SPLIT if task == "vqa" else "train"
    total = len(read_task(task, root, split))
    _, where = _two_bad_records(task, root)
    with pytest.raises(DataError):
        read_task(task, root, split)
    records, skipped = read_task_report(task, root, split)
    total = 4 if task == "vcr" else total  # the vcr case writes four records
    assert (len(records), len(skipped)) == (total - 2, 2)
    assert [next(w for w in where if w in line) for line in skipped.lines()] == where
    assert all(line.count("; fix: ") == 1 and "\n" not in line for line in skipped.lines())


def test_training_with_skip_bad_says_what_it_skipped(tmp_path: Path, monkeypatch, capsys) -> None:
    """``data.skip_bad: true`` must not drop records silently: the run names how many and which."""
    root = write_snli_ve(tmp_path / "snli", ("train", "dev", "test"))
    edit_jsonl(snli_ve_file(root, "train"), 2, lambda row: row.__setitem__("gold_label", "maybe"))
    tree = tiny_tree(
        "snli_ve",
        data={"root": str(root), "skip_bad": True, "max_train": None, "max_eval": None, "world_scale": 1.0},
    )
    config = write_config(tmp_path / "skip.yaml", tree)
    result = run_cli(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"], monkeypatch, capsys)
    assert result.code == 0, result.err[-2000:]
    said = result.out + result.err
    assert re.search(r"skipped 1 ", said), said
    assert "snli_ve_train.jsonl: line 3 (pairID 100.jpg#train2): gold_label is 'maybe'" in said


# ------------------------------------------------------------------------------------ teacher cache


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cache built by ``vldistill cache build`` for a tiny MAD config: (config, cache key folder)."""
    folder = tmp_path_factory.mktemp("teacher-cache")
    tree = tiny_tree(
        "snli_ve",
        "mad",
        ("vision", "text"),
        data={"max_train": 16},
        cache={"enabled": True, "dir": str(folder / "cache")},
    )
    config = write_config(folder / "mad.yaml", tree)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["vldistill", "cache", "build", str(config)])
        main()
    (meta,) = (folder / "cache").glob("*/meta.json")
    return config, meta.parent


def _train_with_cache(config: Path, cache_root: Path, tmp_path: Path, monkeypatch, capsys) -> CliResult:
    return run_cli(
        [
            "train",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            f"cache.dir={cache_root}",
        ],
        monkeypatch,
        capsys,
    )


def _copy_cache(built: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "cache"
    shutil.copytree(built.parent, root)
    return root, root / built.name


DAMAGES = [
    "truncated-shard",
    "missing-shard",
    "corrupt-meta",
    "meta-wrong-shape",
    "shard-header-garbage",
    "shard-header-not-an-object",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_teacher_cache_is_named(damage: str, built_cache, tmp_path: Path, monkeypatch, capsys) -> None:
    config, built = built_cache
    root, folder = _copy_cache(built, tmp_path)
    shard = sorted(folder.glob("shard-*.safetensors"))[0]
    expect: tuple[str, ...]
    if damage == "truncated-shard":
        truncate(shard, 0.9)
        expect = (shard.name, "truncated", "delete the cache folder")
    elif damage == "missing-shard":
        shard.unlink()
        expect = (shard.name, "unreadable cache shard")
    elif damage == "corrupt-meta":
        (folder / "meta.json").write_text('{"key": {}, "shards": ["shard-', encoding="utf-8")
        expect = ("meta.json", "unreadable cache index")
    elif damage == "meta-wrong-shape":
        (folder / "meta.json").write_text('{"key": {}, "shards": [7]}', encoding="utf-8")
        expect = ("meta.json", "unreadable cache index")
    elif damage == "shard-header-garbage":  # a header length of 2**64 - 1
        shard.write_bytes(b"\xff" * 8 + shard.read_bytes()[8:])
        expect = (shard.name, "unreadable cache shard")
    else:
        shard.write_bytes(struct.pack("<Q", 2) + b"[]")
        expect = (shard.name, "unreadable cache shard")
    line = assert_one_line_error(_train_with_cache(config, root, tmp_path, monkeypatch, capsys), expect)
    assert str(folder) in line


def test_intact_teacher_cache_trains(built_cache, tmp_path: Path, monkeypatch, capsys) -> None:
    config, built = built_cache
    root, folder = _copy_cache(built, tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    result = _train_with_cache(config, root, tmp_path, monkeypatch, capsys)
    assert result.code == 0, result.err[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == before  # every row was found: nothing rebuilt
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
