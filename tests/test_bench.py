"""The benchmark machinery of ``bench/run.py`` on a tiny setting (figures computed, never timed against)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from bench_scripts import bench_script
from tiny_configs import TEACHERS, TINY_STUDENT

from vldistill.training.timing import Timings, interleaved_times


@pytest.fixture(scope="module")
def bench():
    with bench_script("run") as module:
        yield module


def test_cases_are_interleaved_in_rotating_order_after_warmup():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = interleaved_times(cases, repeats=2, warmup=1)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {n: len(t) for n, t in timings.wall.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(t >= 0 for ts in timings.cpu.values() for t in ts)


def test_ratio_is_of_medians():
    timings = Timings(wall={"a": [1.0, 3.0, 2.0], "b": [4.0, 4.0, 8.0]}, cpu={"a": [1.0], "b": [2.0]})
    assert timings.ratio("a", "b") == 0.5
    assert timings.ratio("b", "a", clock="cpu") == 2.0
    assert timings.median_ms("wall", per=2) == {"a": 1000.0, "b": 2000.0}


def test_quick_run_writes_every_figure(bench, tmp_path, monkeypatch):
    tiny = replace(
        bench.QUICK,
        student=dict(TINY_STUDENT),
        teachers={"vision": TEACHERS["vision"], "text": TEACHERS["text"]},
        batch_size=8,
        train_batches=2,
        images=2,
        repeats=2,
        warmup=1,
    )
    monkeypatch.setattr(bench, "QUICK", tiny)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        returned = bench.main(["--quick", "--json", str(out), "--threads", "1", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["threads"] == 1 and result["device"] == "cpu" and "demo_seconds" not in result
    assert result["setting"]["student"] == TINY_STUDENT and result["setting"]["repeats"] == 2
    assert result["machine"]["nproc"] >= 1 and result["machine"]["ram_gib"] > 0
    assert set(result["figures"]) == {name for name, *_ in bench.FIGURES}
    for name, num, den, target in bench.FIGURES:
        fig = result["figures"][name]
        assert (fig["numerator"], fig["denominator"]) == (num, den)
        for value in (fig["value"], fig["cpu_time_value"]):
            assert math.isfinite(value) and value > 0
        assert fig["meets_target"] is None if target is None else isinstance(fig["meets_target"], bool)
        assert fig["target"] == (None if target is None else f"{target[0]} {target[1]}")
    medians = result["medians"]
    assert set(medians["train_step_ms_wall"]) == {"train_none", "train_mad_cache", "train_mad_live", "bare_none"}
    assert set(medians["inference_ms_per_question_cpu"]) == {
        "fusion",
        "dual_precomputed",
        "dual_amortized",
        "dual_cold",
    }
    assert all(v > 0 for group in medians.values() for v in group.values())
    memory = result["peak_memory_mib"]
    assert set(memory["train_step"]) == set(medians["train_step_ms_wall"])
    assert set(memory["inference_call"]) == set(medians["inference_ms_per_question_wall"])
    assert all(m["peak"] > 0 for group in memory.values() for m in group.values())
