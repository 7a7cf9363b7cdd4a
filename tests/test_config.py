"""``vldistill.config``: protocol files told apart from experiments, ``--set`` errors naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny_configs import tiny_tree

from vldistill.config import PRESETS_DIR, load_config, parse_config
from vldistill.errors import ConfigError


def _error(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_the_shipped_protocol_file_points_to_vldistill_protocol() -> None:
    path = PRESETS_DIR / "protocol-paper.yaml"
    assert _error(lambda: load_config(path)) == (
        f"{path} is a protocol file (tasks x conditions x methods x seeds), not one experiment; "
        f"fix: run it with `vldistill protocol {path} --out DIR`"
    )


def test_the_demo_file_points_to_vldistill_demo() -> None:
    path = PRESETS_DIR / "demo.yaml"
    assert _error(lambda: load_config(path)) == (
        f"{path} is the demo's protocol file, not one experiment; fix: run `vldistill demo --out DIR`"
    )


def test_a_config_with_data_is_an_experiment_even_with_a_tasks_key() -> None:
    tree = dict(tiny_tree(), base={}, tasks=["vqa"])
    assert _error(lambda: parse_config(tree, "c.yaml")) == (
        "c.yaml: unknown key 'base'; fix: remove it or check its spelling (see configs/ for examples)"
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "train.epochs=abc",
            "--set train.epochs=abc: train.epochs: Input should be a valid integer, unable to parse string as an "
            "integer; fix: correct the value of 'train.epochs'",
        ),
        (
            "train.epoch=2",
            "--set train.epoch=2: unknown key 'train.epoch'; fix: remove it or check its spelling "
            "(see configs/ for examples)",
        ),
        (
            "train=3",
            "--set train=3: train: Input should be a valid dictionary or instance of TrainConfig; "
            "fix: correct the value of 'train'",
        ),
        ("train.epochs", "--set train.epochs: no '='; fix: write key.path=value, e.g. --set train.epochs=1"),
        (
            "train.lr=[1",
            "--set train.lr=[1: value '[1' is not valid YAML (expected ',' or ']', but got '<stream end>'); "
            "fix: quote it or correct it",
        ),
        ("data.task.x=1", "--set data.task.x=1: 'task' is not a section; fix: name a key inside a section"),
    ],
)
def test_set_errors_name_the_option(tmp_path: Path, option: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_tree()), encoding="utf-8")
    assert _error(lambda: load_config(path, ["train.epochs=2", option])) == message


def test_a_bad_value_in_the_file_still_names_the_file_despite_other_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(train={"lr": "fast"})), encoding="utf-8")
    assert _error(lambda: load_config(path, ["train.epochs=2", "data.max_train=8"])) == (
        f"{path}: train.lr: Input should be a valid number, unable to parse string as a number; "
        "fix: correct the value of 'train.lr'"
    )


def test_overrides_apply() -> None:
    cfg = parse_config(tiny_tree(), "t", ["train.epochs=5", "method.name=kd", "data.max_eval=null"])
    assert (cfg.train.epochs, cfg.method.name, cfg.data.max_eval) == (5, "kd", None)
