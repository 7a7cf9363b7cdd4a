"""``vldistill plan --cost``: the cache's size, the recommendation, and a cost plan of tiny models.

Timings are measured, never asserted against a value (speed belongs in bench/).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_configs import tiny_tree

from vldistill.cli import main
from vldistill.config import parse_config
from vldistill.data.split_sizes import PUBLISHED_TRAIN_SPLITS, count_split
from vldistill.training.cost import (
    LIVE_OVER_CACHED,
    human_bytes,
    human_seconds,
    make_cost_plan,
    recommend,
)
from vldistill.training.timing import PeakMemory

MAD = ("vision", "text")


def test_recommendation_rules() -> None:
    assert recommend(3.0, 1.0, 10, 100, passes=10)[0] == "cache"
    kind, why = recommend(3.0, 1.0, 1000, 100, passes=10)
    assert kind == "live" and "does not fit" in why and "cache.dir" in why
    kind, why = recommend(LIVE_OVER_CACHED, 1.0, 10, 100, passes=10)
    assert kind == "live" and f"{LIVE_OVER_CACHED:.2f}x" in why
    kind, why = recommend(3.0, 1.0, 10, 100, passes=1)
    assert kind == "live" and "reuse" in why


def test_units() -> None:
    assert [human_bytes(n) for n in (512, 1536, 5 * 2**30)] == ["512 B", "1.5 KiB", "5 GiB"]
    assert [human_seconds(s) for s in (0.25, 12, 95, 7200, 9.5e6, 1e9)] == [
        "250 ms",
        "12 s",
        "1.58 min",
        "2 h",
        "110 days",
        "11,574 days",
    ]


def test_published_split_sizes() -> None:
    assert {task: s.examples for task, s in PUBLISHED_TRAIN_SPLITS.items()} == {
        "vqa": 443_757,
        "snli_ve": 529_527,
        "nlvr2": 86_373,
        "vcr": 425_846,  # 212,923 questions, each a Q->A and a QA->R example
    }


def test_peak_memory_sees_a_tensor_made_in_the_call() -> None:
    memory = PeakMemory("cpu")
    held = []
    measured = memory.measure({"alloc": lambda: held.append(torch.ones(16 * 2**20))})  # 64 MiB, pages touched
    assert measured["alloc"]["peak"] > 64 * 2**20
    if memory.source == "peak_rss":
        assert measured["alloc"]["added"] >= 60 * 2**20


@pytest.fixture(scope="module")
def mad_plan():
    cfg = parse_config(tiny_tree("vqa", "mad", MAD, train={"epochs": 3, "batch_size": 8}), "t")
    return cfg, make_cost_plan(cfg, steps=1, warmup=0)


def test_cost_plan_of_a_tiny_mad_run(mad_plan) -> None:
    cfg, plan = mad_plan
    assert plan.split.examples == 24 and 0 < plan.split.images <= 24 and 0 < plan.split.texts <= 24
    assert [m["role"] for m in plan.models] == ["student", "projections", "teacher", "teacher"]
    assert all(m["weight_bytes"] >= 4 * m["parameters"] > 0 for m in plan.models)
    assert set(plan.step_seconds) == set(plan.peak_memory) == {"live", "cache"}
    assert all(t > 0 for t in plan.step_seconds.values())
    assert all(m["peak"] > 0 for m in plan.peak_memory.values())
    assert plan.batches_per_epoch == 3 and plan.passes == 3
    assert plan.cache_bytes == round(plan.cache_bytes_per_example * 24)
    live, cached = plan.step_seconds["live"], plan.step_seconds["cache"]
    assert plan.run_seconds["live"] == pytest.approx(9 * live)
    assert plan.run_seconds["cache_build"] == pytest.approx(3 * max(live - cached, 0))
    assert (plan.recommendation, plan.reason) == recommend(live, cached, plan.cache_bytes, plan.free_bytes, 3)
    json.dumps(plan.to_dict())


def test_cache_size_is_what_the_cache_writes(mad_plan, tmp_path: Path) -> None:
    """The projection against the bytes on disk of a cache built for the whole (tiny) split: each image's
    and each text's rows once, per-example rows, the digest memo and the derived maps; and the plan's
    figure, projected from the timed examples only, the same (rows are fixed-shape)."""
    from vldistill.training.cache import open_teacher_cache
    from vldistill.training.cache.size import projected_bytes, store_sizes
    from vldistill.training.experiment import build_models, load_data

    cfg, plan = mad_plan
    cfg = cfg.model_copy(update={"cache": cfg.cache.model_copy(update={"dir": str(tmp_path), "enabled": True})})
    data = load_data(cfg.data, verbose=False)
    cache = open_teacher_cache(cfg, data, build_models(cfg, data).method)
    split = count_split(data.train, "vqa train2014 at world, as configured")
    sizes = store_sizes(cache)
    assert (sizes["images"]["rows"], sizes["texts"]["rows"]) == (split.images, split.texts)
    assert split.texts < split.examples  # questions asked of several images: each stored once
    on_disk = sum(p.stat().st_size for p in cache.folder.iterdir() if p.name != "meta.json" and p.is_file())
    assert projected_bytes(cache, split) == on_disk
    assert plan.split == split and plan.cache_bytes == pytest.approx(on_disk, rel=0.02)  # shard headers vary


def test_without_data_the_published_split_size_is_used(tmp_path: Path) -> None:
    tree = tiny_tree("vqa", "none", train={"batch_size": 4})
    tree["data"].update(root=str(tmp_path / "not-downloaded"), max_train=None, max_eval=None)
    plan = make_cost_plan(parse_config(tree, "t"), steps=1, warmup=0)
    assert plan.split == PUBLISHED_TRAIN_SPLITS["vqa"]
    assert "not-downloaded is not there" in plan.timed_on and "generated world" in plan.timed_on
    assert plan.batches_per_epoch == math.ceil(443_757 / 4)
    assert set(plan.step_seconds) == {"student"} and plan.recommendation == "none"
    assert plan.cache_bytes is None


def test_plan_cost_command(mad_plan, tmp_path: Path, monkeypatch, capsys) -> None:
    """``plan --cost`` measures with ``--steps`` and prints the plan (here the fixture's, not measured again)."""
    cfg, plan = mad_plan
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_tree("vqa", "mad", MAD, train={"epochs": 3, "batch_size": 8})))
    calls = []
    monkeypatch.setattr("vldistill.training.cost.make_cost_plan", lambda c, steps: calls.append((c, steps)) or plan)
    monkeypatch.setattr(sys, "argv", ["vldistill", "plan", str(path), "--cost", "--steps", "2"])
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None)
    assert calls == [(cfg, 2)]
    out = capsys.readouterr().out
    for line in (
        "cost plan (vqa, batch 8, 1 timed steps per case",
        "training split 24 examples, ",
        "run 3 batches per epoch, 3 passes over the split",
        f"recommendation {'use the teacher cache' if plan.recommendation == 'cache' else 'run the teachers live'}: "
        + plan.reason[:40],
    ):
        assert line in out
    assert "│ live teachers │" in out and "│ teacher cache │" in out
