"""The protocol matrix: rows in results.jsonl, continuation after an interruption, DiDE teacher refs."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_configs import TINY_STUDENT, tiny_tree

from vldistill.errors import ConfigError
from vldistill.protocol import ProtocolConfig, load_protocol, read_results, run_protocol


def _spec(**extra) -> ProtocolConfig:
    base = tiny_tree("snli_ve")
    base.pop("method")
    base["data"]["shift_root"] = "world:shifted"
    tree = {
        "name": "t",
        "base": base,
        "tasks": ["snli_ve"],
        "conditions": [{"name": "full"}, {"name": "lowshot-0.5", "fraction": 0.5}],
        "methods": {
            "none": {"method": {"name": "none"}},
            "dual": {"method": {"name": "none"}, "student": {"kind": "dual"}, "conditions": ["full"]},
            "dide": {
                "method": {
                    "name": "dide",
                    "teachers": {"vilt": {"kind": "fusion", "pretrained": "run:full/none/seed0"}},
                },
                "student": {"kind": "dual"},
                "conditions": ["full"],
            },
        },
        "seeds": [0],
        **extra,
    }
    return ProtocolConfig.model_validate(tree)


def test_protocol_rows_and_continuation(tmp_path, monkeypatch):
    import vldistill.train as engine

    real_train = engine.train
    calls = []

    def crash_on_third(cfg, out, **kw):
        calls.append(cfg.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(cfg, out, **kw)

    monkeypatch.setattr(engine, "train", crash_on_third)
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        run_protocol(_spec(), out)
    first = read_results(out / "results.jsonl")
    assert {(r["condition"], r["label"]) for r in first} == {
        ("full", "none"),
        ("shift", "none"),
        ("full", "dual"),
        ("shift", "dual"),
    }
    monkeypatch.setattr(engine, "train", lambda cfg, out, **kw: calls.append(cfg.name) or real_train(cfg, out, **kw))
    run_protocol(_spec(), out)
    # the two finished runs were not redone; the interrupted third and the fourth ran
    assert calls[3:] == ["t/snli_ve/full/dide/seed0", "t/snli_ve/lowshot-0.5/none/seed0"]
    rows = read_results(out / "results.jsonl")
    cells = {(r["condition"], r["label"], r["student"], r["split"]) for r in rows if r["metric"] == "accuracy"}
    plain = {
        ("full", "none", "fusion", "eval"),
        ("shift", "none", "fusion", "shifted"),
        ("full", "dual", "dual", "eval"),
        ("shift", "dual", "dual", "shifted"),
        ("full", "dide", "dual", "eval"),
        ("shift", "dide", "dual", "shifted"),
        ("lowshot-0.5", "none", "fusion", "eval"),
    }
    # each split beside its image-shuffle control, under the same condition
    assert cells == plain | {(c, label, student, f"{split}:shuffled") for c, label, student, split in plain}
    low = next(r for r in rows if r["condition"] == "lowshot-0.5")
    full = next(r for r in rows if r["condition"] == "full" and r["label"] == "none")
    assert low["fraction"] == 0.5 and low["train_examples"] == full["train_examples"] // 2
    assert all(
        set(r)
        >= {"task", "condition", "method", "student", "seed", "metric", "value", "split", "train_examples", "seconds"}
        for r in rows
    )
    dide = next(r for r in rows if r["label"] == "dide")
    assert dide["method"] == "dide" and dide["student"] == "dual"
    manifest = json.loads((out / "runs/snli_ve/lowshot-0.5/none/seed0/subset.json").read_text())
    assert manifest["records"] == low["train_examples"] and manifest["params"]["fraction"] == 0.5


def test_protocol_file_errors(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"base": {}, "tasks": ["vqa"], "methods": {}, "conditions": [{"name": "x"}]}))
    with pytest.raises(ConfigError, match="full"):
        load_protocol(bad)
    bad.write_text(yaml.safe_dump({"base": {}, "tasks": ["vqa"], "methods": {}, "seedz": [1]}))
    with pytest.raises(ConfigError, match="unknown key 'seedz'"):
        load_protocol(bad)


def test_teacher_reference_to_a_run_that_does_not_exist(tmp_path):
    spec = _spec()
    spec.methods = {"dide": spec.methods["dide"]}
    with pytest.raises(ConfigError, match="list the method it names earlier"):
        run_protocol(spec, tmp_path / "p")
    assert TINY_STUDENT["num_heads"] == 2  # the dual student shares the teacher's heads and patch grid
