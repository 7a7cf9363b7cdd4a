"""``vldistill.training.experiment``: the dev set (a split, or a holdout grouped by image) beside training and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.data.examples import TaskExample
from vldistill.errors import ConfigError
from vldistill.training.experiment import hold_out_dev, load_data


def _example(record: str, *images: str, stage: str = "") -> TaskExample:
    uid = f"{record}/{stage}" if stage else record
    return TaskExample(uid, "x", tuple(Path(i) for i in images), ("t",), meta={"record": record})


# Pictures: r0 r1 share a; r3 r4 r5 share c; r8 (f, g) and r9 (g, h) share g, as NLVR2 pairs can.
EXAMPLES = [
    _example("r0", "a"),
    _example("r1", "a"),
    _example("r2", "b"),
    _example("r3", "c"),
    _example("r4", "c"),
    _example("r5", "c"),
    _example("r6", "d"),
    _example("r7", "e"),
    _example("r8", "f", "g"),
    _example("r9", "g", "h"),
]


def _records(examples: list[TaskExample]) -> list[str]:
    return [ex.meta["record"] for ex in examples]


@pytest.mark.parametrize(
    ("holdout", "dev"),
    [
        (1, ["r8", "r9"]),  # the first group drawn holds two records: both go
        (2, ["r8", "r9"]),
        (3, ["r0", "r1", "r8", "r9"]),
        (0.3, ["r0", "r1", "r8", "r9"]),  # round(0.3 x 10 records) = 3
    ],
)
def test_the_holdout_takes_whole_picture_groups_in_a_fixed_order(holdout: float, dev: list[str]) -> None:
    rest, held = hold_out_dev(EXAMPLES, holdout)
    assert _records(held) == dev
    assert _records(rest) == [r for r in _records(EXAMPLES) if r not in dev]
    assert not {p for ex in rest for p in ex.images} & {p for ex in held for p in ex.images}
    # the draw depends on the records alone, not on their order
    assert sorted(_records(hold_out_dev(list(reversed(EXAMPLES)), holdout)[1])) == dev


def test_a_records_examples_stay_together_and_a_holdout_of_everything_is_refused() -> None:
    vcr = [_example(f"v{i}", f"img{i}", stage=s) for i in range(4) for s in ("qa", "qar")]
    rest, held = hold_out_dev(vcr, 1)
    assert len(held) == 2 and len(set(_records(held))) == 1 and len(rest) == 6
    with pytest.raises(ConfigError) as info:
        hold_out_dev(EXAMPLES, 10)
    assert str(info.value) == (
        "data.dev_holdout (10) takes all 10 training records (records sharing an image stay together); fix: hold "
        "out fewer records, or use data.dev_split"
    )


def test_snli_ve_reads_its_dev_split_for_selection_and_its_test_split_for_evaluation() -> None:
    data = load_data(parse_config(tiny_tree("snli_ve"), "t").data)
    assert data.dev is not None and data.dev.name == "dev" and set(data.evals) == {"eval"}
    assert [s.rsplit(":", 1)[1] for s in data.sources] == ["train", "dev", "test"]
    dev_ids, test_ids = {ex.uid for ex in data.dev.examples}, {ex.uid for ex in data.evals["eval"].examples}
    assert len(data.dev.examples) == 12  # max_eval: 12 records (one hypothesis each)
    assert not dev_ids & test_ids and not dev_ids & {ex.uid for ex in data.train}


def test_every_seed_and_subset_selects_on_the_same_held_out_dev_set(tmp_path: Path) -> None:
    def data(seed: int, fraction: float | None, out: Path | None = None):
        tree = tiny_tree(
            "vqa",
            data={"max_train": 40, "dev_holdout": 0.25, "fraction": fraction, "subset_seed": seed},
            train={"seed": seed},
        )
        return load_data(parse_config(tree, "t").data, out)

    full = data(0, None)
    runs = [data(0, 0.5, tmp_path), data(1, 0.5), data(2, 0.25)]
    assert full.dev is not None
    dev_ids = [ex.uid for ex in full.dev.examples]
    assert len({ex.meta["record"] for ex in full.dev.examples}) >= 10  # at least 25% of the 40 records
    assert {ex.meta["record"] for ex in full.train} | {ex.meta["record"] for ex in full.dev.examples} == {
        ex.meta["record"] for ex in load_data(parse_config(tiny_tree("vqa", data={"max_train": 40}), "t").data).train
    }
    for run in runs:
        assert run.dev is not None and [ex.uid for ex in run.dev.examples] == dev_ids
        assert not {p for ex in run.train for p in ex.images} & {p for ex in run.dev.examples for p in ex.images}
    assert {ex.uid for ex in runs[0].train} != {ex.uid for ex in runs[1].train}  # the subsets differ by seed
    manifest = json.loads((tmp_path / "subset.json").read_text())
    assert manifest["params"]["dev_holdout"] == 0.25 and manifest["params"]["dev_split"] is None
    assert set(manifest["ids"]) == {ex.meta["record"] for ex in runs[0].train}


def test_zero_shot_prompts_are_part_of_the_data_fingerprint() -> None:
    """A teacher cache holds candidate scores: other prompts must not reuse it; the defaults keep old keys."""
    tree = tiny_tree("snli_ve")
    default = load_data(parse_config(tree, "t").data).fingerprint
    tree["data"]["ve_prompts"] = ["{}", "perhaps {}", "it is not true that {}"]  # the defaults, written out
    assert load_data(parse_config(tree, "t").data).fingerprint == default
    tree["data"]["ve_prompts"] = ["{}", "maybe {}", "it is not true that {}"]
    assert load_data(parse_config(tree, "t").data).fingerprint != default
