"""Nothing let in: no code runs from data, configs, checkpoints or caches; no path escapes its root.

The package source is scanned (by syntax tree, not text) for the calls that turn bytes into code:
``torch.load`` without ``weights_only=True``, unsafe YAML loaders, pickle, eval/exec, dynamic imports,
``trust_remote_code``. Then the inputs a user or an attacker controls are tried: configs that name
import paths or carry YAML's python tags, a checkpoint whose ``state.pt`` pickles a call, a teacher
cache whose index points outside its folder, and annotation files whose image paths climb out of
the dataset root.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from reliability.corpus_files import (
    assert_one_line_error,
    edit_jsonl,
    run_cli,
    write_config,
    write_nlvr2,
    write_snli_ve,
    write_vcr,
    write_vqa,
)
from safetensors.torch import load_file, save_file
from tiny_configs import tiny_tree

import vldistill
from vldistill.config import parse_config
from vldistill.errors import ConfigError, DataError
from vldistill.training.cache import TeacherCache

PACKAGE = Path(vldistill.__file__).parent
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "marshal",
    "shelve",
    "importlib",
    "runpy",
    "joblib",
}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a name or attribute chain, else ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


@functools.cache
def _sources() -> list[tuple[str, ast.Module]]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40  # the scan sees the whole package
    return [(str(f.relative_to(PACKAGE.parent)), ast.parse(f.read_text(encoding="utf-8"))) for f in files]


def _calls(name: str) -> list[tuple[str, int, ast.Call]]:
    return [
        (path, node.lineno, node)
        for path, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _dotted(node.func) == name
    ]


def test_every_torch_load_is_weights_only() -> None:
    calls = _calls("torch.load")
    assert len(calls) >= 2  # checkpoint state and the EfficientNet weights: the scan finds real calls
    for path, line, call in calls:
        flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
        assert isinstance(flag, ast.Constant) and flag.value is True, (
            f"{path}:{line}: torch.load without weights_only=True"
        )


def test_yaml_is_only_read_with_safe_load() -> None:
    assert _calls("yaml.safe_load")  # configs are YAML: the safe reader is the one in use
    for method in UNSAFE_YAML:
        assert not _calls(f"yaml.{method}"), f"yaml.{method} can build arbitrary objects: use yaml.safe_load"
    names = {_dotted(n) for _, tree in _sources() for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"}


def node_is_unsafe_from_import(node: ast.AST) -> bool:
    """``from <unsafe module> import ...``; ``importlib.metadata`` (installed versions) imports nothing."""
    if not isinstance(node, ast.ImportFrom) or node.module == "importlib.metadata":
        return False
    return (node.module or "").split(".")[0] in UNSAFE_MODULES


def test_no_pickle_eval_exec_or_dynamic_imports() -> None:
    found = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [
                    f"{path}:{node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] in UNSAFE_MODULES
                ]
            elif node_is_unsafe_from_import(node):
                # importing an exception class to catch it (pickle.UnpicklingError) loads nothing
                found += [
                    f"{path}:{node.lineno}: from {node.module} import {a.name}"
                    for a in node.names
                    if not a.name.endswith("Error")
                ]
            elif isinstance(node, ast.Call) and _dotted(node.func) in UNSAFE_BUILTINS:
                found.append(f"{path}:{node.lineno}: {_dotted(node.func)}()")
            elif isinstance(node, ast.Call) and _dotted(node.func) in {"os.system", "os.popen"}:
                found.append(f"{path}:{node.lineno}: {_dotted(node.func)}()")
    assert found == []


def test_no_remote_code_from_model_hubs() -> None:
    """``trust_remote_code`` would run a checkpoint's Python: a config naming a model must not do that."""
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path


# ------------------------------------------------------------------------------------------ configs

IMPORT_PATHS = [
    ("method", "name", "os.system"),
    ("method", "name", "vldistill.training.train:train"),
    ("student", "kind", "subprocess.Popen"),
    ("data", "task", "builtins.eval"),
]


@pytest.mark.parametrize(("section", "key", "value"), IMPORT_PATHS, ids=lambda v: str(v))
def test_config_naming_an_import_path_is_rejected(
    section: str, key: str, value: str, tmp_path, monkeypatch, capsys
) -> None:
    tree = copy.deepcopy(tiny_tree("snli_ve"))
    tree[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be"):
        parse_config(tree, "attack.yaml")
    result = run_cli(["plan", str(write_config(tmp_path / "attack.yaml", tree))], monkeypatch, capsys)
    assert_one_line_error(result, ("attack.yaml", f"{section}.{key}"))


def test_teacher_kind_naming_an_import_path_is_rejected() -> None:
    tree = copy.deepcopy(tiny_tree("snli_ve", "mad", ("text",)))  # the teacher entries are shared
    tree["method"]["teachers"]["text"]["kind"] = "os.system"
    with pytest.raises(ConfigError, match=r"method\.teachers\.text\.kind"):
        parse_config(tree, "attack.yaml")


def test_yaml_python_tags_run_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "tagged.yaml"
    config.write_text(
        f'name: !!python/object/apply:os.system ["touch {marker}"]\ndata: {{task: vqa}}\n', encoding="utf-8"
    )
    assert_one_line_error(run_cli(["plan", str(config)], monkeypatch, capsys), ("tagged.yaml", "invalid YAML"))
    assert not marker.exists()


@pytest.mark.parametrize("value", ['!!python/object/apply:os.system ["touch {marker}"]', "[unclosed"])
def test_override_values_are_safe_yaml_with_a_clear_error(value: str, tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "pwned"
    args = ["plan", "--preset", "smoke", "--set", "name=" + value.format(marker=marker)]
    assert_one_line_error(run_cli(args, monkeypatch, capsys), ("--set name=", "not valid YAML"))
    assert not marker.exists()


# --------------------------------------------------------------------------------- checkpoints, caches


class _Payload:
    """Pickles as a call of ``os.system``: what a tampered ``state.pt`` would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def test_checkpoint_state_that_pickles_code_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    """A ``state.pt`` carrying a pickled call (hashes updated, as an attacker would) runs nothing.

    The checkpoint is skipped like a corrupt one, naming ``state.pt``, and the run resumes from the
    previous whole checkpoint to the weights of the untouched run.
    """
    tree = tiny_tree("snli_ve", train={"checkpoint_every": 1, "keep_checkpoints": 5})
    config = write_config(tmp_path / "tiny.yaml", tree)
    run = tmp_path / "run"
    args = ["train", str(config), "--out", str(run), "--no-progress"]
    assert run_cli(args, monkeypatch, capsys).code == 0
    finished = load_file(str(run / "final" / "model.safetensors"))
    shutil.rmtree(run / "final")
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Payload(f"touch {marker}")}, newest / "state.pt")
    complete = json.loads((newest / "COMPLETE.json").read_text())
    complete["sha256"]["state.pt"] = hashlib.sha256((newest / "state.pt").read_bytes()).hexdigest()
    (newest / "COMPLETE.json").write_text(json.dumps(complete))

    result = run_cli([*args, "--resume"], monkeypatch, capsys)
    assert not marker.exists()
    assert "Traceback" not in result.err
    assert result.code == 0, result.err[-2000:]
    assert f"skipped checkpoint {newest.name}: state.pt" in result.out
    assert "resumed from step-" in result.out and f"resumed from {newest.name}" not in result.out
    resumed = load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(resumed[k], finished[k]) for k in finished)


def test_cache_index_naming_a_file_outside_its_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "key"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.safetensors"
    save_file({"t/x": torch.zeros(1, 2)}, str(outside), metadata={"uids": json.dumps(["a"])})
    (folder / "meta.json").write_text(json.dumps({"key": {}, "shards": ["../../outside.safetensors"]}))
    with pytest.raises(DataError) as info:
        TeacherCache(folder, fp16=False)
    assert Path(info.value.file).name == "meta.json" and "outside" in info.value.problem


# ------------------------------------------------------------------------------ paths out of the root

ESCAPES = [
    (
        "vcr-img_fn-parent",
        "vcr",
        lambda r: edit_jsonl(r / "train.jsonl", 0, lambda row: row.update(img_fn="../../../etc/passwd")),
        ("train.jsonl", "line 1 (annot_id train-0)", "img_fn", "outside"),
    ),
    (
        "vcr-metadata_fn-parent",
        "vcr",
        lambda r: edit_jsonl(
            r / "train.jsonl", 1, lambda row: row.update(metadata_fn="lsmdc_0001_movie/../../../secret.json")
        ),
        ("train.jsonl", "line 2 (annot_id train-1)", "metadata_fn", "outside"),
    ),
    (
        "vcr-img_fn-absolute",
        "vcr",
        lambda r: edit_jsonl(r / "train.jsonl", 0, lambda row: row.update(img_fn="/etc/passwd")),
        ("train.jsonl", "line 1", "img_fn", "not a relative path"),
    ),
    (
        "snli_ve-flickr-id-parent",
        "snli_ve",
        lambda r: edit_jsonl(r / "snli_ve_train.jsonl", 2, lambda row: row.update({"Flickr30K_ID": "../../etc/x"})),
        ("snli_ve_train.jsonl", "line 3", "Flickr30K_ID", "outside"),
    ),
    (
        "nlvr2-identifier-parent",
        "nlvr2",
        lambda r: edit_jsonl(r / "train.json", 0, lambda row: row.update(identifier="train-5-0-0/../../../../etc/x")),
        ("train.json", "line 1", "identifier"),
    ),
    (
        "nlvr2-negative-directory",
        "nlvr2",
        lambda r: edit_jsonl(r / "train.json", 1, lambda row: row.update(directory=-1)),
        ("train.json", "line 2", "directory is negative"),
    ),
    ("vqa-negative-image-id", "vqa", lambda r: None, ()),
]


@pytest.mark.parametrize(("name", "task", "escape", "expect"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_image_paths_cannot_leave_the_dataset_root(name, task, escape, expect, tmp_path, monkeypatch, capsys) -> None:
    if task == "vqa":  # ids are integers, so a path cannot be written; a negative id is still refused
        root = write_vqa(tmp_path / task)
        path = root / "v2_OpenEnded_mscoco_train2014_questions.json"
        path.write_text(path.read_text().replace('"image_id": 8', '"image_id": -8'))
        split, expect = "train2014", (path.name, "question_id 200", "image_id is negative")
    else:
        root = {"vcr": write_vcr, "snli_ve": write_snli_ve, "nlvr2": write_nlvr2}[task](tmp_path / task)
        escape(root)
        split = "train"
    assert_one_line_error(run_cli(["data", "check", task, str(root), "--split", split], monkeypatch, capsys), expect)
