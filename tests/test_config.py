"""``vldistill.config``: protocol files told apart from experiments, ``--set`` errors naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny_configs import tiny_tree

from vldistill.config import PRESETS_DIR, load_config, parse_config, preset_path
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


# ---------------------------------------------------------------- the dev set and selection


def test_snli_ve_selects_on_dev_and_reports_test_other_tasks_have_no_dev_by_default() -> None:
    snli = parse_config(tiny_tree("snli_ve"), "t").data
    assert (snli.splits(), snli.dev_split, snli.dev_holdout) == (("train", "test"), "dev", None)
    for task, splits in {"vqa": ("train2014", "val2014"), "vcr": ("train", "val"), "nlvr2": ("train", "dev")}.items():
        data = parse_config(tiny_tree(task), "t").data
        assert (data.splits(), data.dev_split, data.has_dev) == (splits, None, False)


def test_a_dev_holdout_replaces_the_default_dev_split_and_null_turns_it_off() -> None:
    held = parse_config(tiny_tree("snli_ve", data={"dev_holdout": 0.2}), "t").data
    assert (held.dev_split, held.dev_holdout, held.has_dev) == (None, 0.2, True)
    assert parse_config(tiny_tree("vqa", data={"dev_holdout": 50}), "t").data.dev_holdout == 50
    off = parse_config(tiny_tree("snli_ve", data={"dev_split": None}), "t").data
    assert (off.dev_split, off.has_dev) == (None, False)
    # config.yaml holds the resolved value, and reads back to the same config
    for data in (held, off, parse_config(tiny_tree("snli_ve"), "t").data):
        assert type(data).model_validate(data.model_dump(mode="json")) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"dev_split": "dev", "dev_holdout": 100},
            "data.dev_split ('dev') and data.dev_holdout (100) are both set, but a run selects on one dev set; "
            "fix: remove one of them",
        ),
        (
            {"dev_split": "test"},
            "data.dev_split 'test' is the evaluation split, but the dev set must be held out from both (selecting "
            "on the evaluation split tunes on it); fix: name another split, use data.dev_holdout, or set "
            "data.dev_split: null",
        ),
        (
            {"dev_split": "train"},
            "data.dev_split 'train' is the training split, but the dev set must be held out from both (selecting "
            "on the evaluation split tunes on it); fix: name another split, use data.dev_holdout, or set "
            "data.dev_split: null",
        ),
        (
            {"dev_holdout": 1.5},
            "data.dev_holdout: 1.5 is not a fraction in (0, 1); fix: give a fraction such as 0.1, or a count of "
            "records such as 200",
        ),
        (
            {"dev_holdout": 0},
            "data.dev_holdout: 0 is not a number of records; fix: give a count >= 1 or a fraction in (0, 1)",
        ),
    ],
)
def test_dev_set_errors_name_the_keys(data: dict, message: str) -> None:
    assert _error(lambda: parse_config(tiny_tree("snli_ve", data=data), "t")) == message


def test_selection_settings_need_a_dev_set_and_evaluations() -> None:
    assert _error(lambda: parse_config(tiny_tree("vqa", train={"eval_every": 10}), "t")) == (
        "train.eval_every (10) selects the weights on a dev set, but this vqa config has none; fix: set "
        "data.dev_split (a split of the dataset) or data.dev_holdout (training records held out, e.g. 0.1)"
    )
    assert _error(lambda: parse_config(tiny_tree("snli_ve", train={"early_stopping": 3}), "t")) == (
        "train.early_stopping (3) counts dev evaluations, but train.eval_every is not set, so there is only the "
        "one at the end; fix: set train.eval_every (optimizer steps)"
    )
    cfg = parse_config(tiny_tree("vqa", data={"dev_holdout": 0.1}, train={"eval_every": 10, "early_stopping": 3}), "t")
    assert (cfg.train.eval_every, cfg.train.early_stopping) == (10, 3)


def test_zero_shot_prompts_are_checked_and_reach_the_candidates(tmp_path):
    from vldistill.data.readers import read_task
    from vldistill.data.tasks import ExampleBuilder
    from vldistill.data.world import generate_world

    with pytest.raises(ConfigError, match="must hold the hypothesis once"):
        parse_config({"data": {"task": "snli_ve", "ve_prompts": ["{}", "maybe", "not {}"]}}, "t")
    with pytest.raises(ConfigError, match="may only use"):
        parse_config({"data": {"task": "vqa", "vqa_prompt": "{q} {answer}"}}, "t")
    with pytest.raises(ConfigError, match="must contain"):
        parse_config({"data": {"task": "vqa", "vqa_prompt": "{question}"}}, "t")
    cfg = parse_config({"data": {"task": "snli_ve", "ve_prompts": ["{}", "maybe {}", "it is not true that {}"]}}, "t")
    generate_world(tmp_path, style="base", scale=0.01)
    records = read_task("snli_ve", tmp_path / "base" / "snli_ve", "train")
    example = ExampleBuilder("snli_ve", records, ve_prompts=cfg.data.ve_prompts)(records[:1])[0]
    hypothesis = records[0].hypothesis
    assert example.candidates == (hypothesis, f"maybe {hypothesis}", f"it is not true that {hypothesis}")
    vqa = read_task("vqa", tmp_path / "base" / "vqa", "train2014")
    question = ExampleBuilder("vqa", vqa, vqa_prompt="{answer}")(vqa[:1])[0]
    assert all(
        " " not in c or c in ("top left", "top right", "bottom left", "bottom right") for c in question.candidates
    )


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "seed", -1),
        ("train", "seed", 2**32),
        ("student", "num_layers", 0),
        ("student", "patch_size", 0),
        ("student", "hidden_size", 0),
    ],
)
def test_out_of_range_sizes_and_seeds_are_config_errors_naming_the_key(section, key, value) -> None:
    from tiny_configs import tiny_tree

    from vldistill.config import parse_config
    from vldistill.errors import ConfigError

    tree = tiny_tree("vqa")
    tree.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        parse_config(tree, "test.yaml")


def test_an_unknown_preset_lists_only_the_presets_the_command_takes() -> None:
    listed = _error(lambda: preset_path("no-such-preset")).split("use one of: ")[1].split(", ")
    assert "smoke" in listed and "clip_td-vqa" in listed
    assert not {"demo", "demo-quick", "protocol-paper", "dide-pretrain-demo"} & set(listed)  # protocol / pretrain files
    assert _error(lambda: preset_path("no-such-preset", ("pretrain",))).endswith("use one of: dide-pretrain-demo")


def test_fraction_and_per_group_together_are_one_line_naming_both() -> None:
    tree = tiny_tree(data={"fraction": 0.1, "per_group": 2})
    assert _error(lambda: parse_config(tree, "c.yaml")).endswith(
        "data.fraction (0.1) and data.per_group (2) are both set, but a low-shot subset is drawn by one of "
        "them; fix: remove one"
    )
