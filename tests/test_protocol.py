"""The protocol matrix: rows in results.jsonl, continuation after an interruption, DiDE teacher refs."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_configs import TINY_STUDENT, tiny_tree

from vldistill.errors import ConfigError
from vldistill.protocol.jobs import Matrix, RunCell
from vldistill.protocol.runner import (
    Condition,
    MethodEntry,
    ProtocolConfig,
    load_protocol,
    read_results,
    rows_of,
    run_protocol,
)


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
    import vldistill.training.train as engine

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
    with pytest.raises(ConfigError) as err:
        run_protocol(spec, tmp_path / "p")
    final = tmp_path / "p/runs/snli_ve/full/none/seed0/final"
    assert str(err.value) == (
        f"teacher reference 'run:full/none/seed0' of snli_ve full dide seed 0: {final} does not exist; fix: list "
        "the method it names in 'methods' (under that condition and seed) so that it runs first"
    )
    assert not (tmp_path / "p/results.jsonl").exists()  # checked before any run
    assert TINY_STUDENT["num_heads"] == 2  # the dual student shares the teacher's heads and patch grid


def _summary(**extra) -> dict:
    """A run summary as train.py writes it with dev selection and the image-shuffle control."""
    breakdown = {"vqa_accuracy/answer_type/yes/no": 70.0, "vqa_accuracy/answer_type/other": 20.0}
    return {
        "task": "vqa",
        "method": "kd",
        "student": "fusion",
        "train_examples": 150,
        "steps": 40,
        "primary_metric": "vqa_accuracy",
        "seconds": 12.5,
        "eval": {
            "eval": {"vqa_accuracy": 45.0, **breakdown, "ms_per_example": 2.0},
            "shifted": {"vqa_accuracy": 30.0, "ms_per_example": 2.5},
            "eval:shuffled": {"vqa_accuracy": 33.0, "ms_per_example": 2.0},
            "shifted:shuffled": {"vqa_accuracy": 28.0},
        },
        "dev": {"vqa_accuracy": 47.5, "vqa_accuracy/answer_type/other": 22.0},
        "best_step": 30,
        **extra,
    }


def test_rows_of_a_summary_with_controls_dev_and_breakdowns():
    rows = rows_of(_summary(), "vqa", Condition(name="lowshot-0.1", fraction=0.1), "kd-l1", 2)
    got = [(r["condition"], r["split"], r["control"], r["metric"], r["value"], r["eval_ms_per_example"]) for r in rows]
    assert got == [
        ("lowshot-0.1", "eval", None, "vqa_accuracy", 45.0, 2.0),
        ("lowshot-0.1", "eval", None, "vqa_accuracy/answer_type/yes/no", 70.0, 2.0),
        ("lowshot-0.1", "eval", None, "vqa_accuracy/answer_type/other", 20.0, 2.0),
        ("shift", "shifted", None, "vqa_accuracy", 30.0, 2.5),
        ("lowshot-0.1", "eval:shuffled", "shuffled", "vqa_accuracy", 33.0, 2.0),
        ("shift", "shifted:shuffled", "shuffled", "vqa_accuracy", 28.0, None),
    ]
    assert rows[0] == {
        "task": "vqa",
        "condition": "lowshot-0.1",
        "method": "kd",
        "label": "kd-l1",
        "student": "fusion",
        "seed": 2,
        "metric": "vqa_accuracy",
        "value": 45.0,
        "split": "eval",
        "control": None,
        "train_examples": 150,
        "seconds": 12.5,
        "fraction": 0.1,
        "eval_ms_per_example": 2.0,
        "eval_deploy_ms_per_example": None,
        "dev": 47.5,
        "best_step": 30,
    }
    assert {(r["dev"], r["best_step"]) for r in rows} == {(47.5, 30)}


def test_rows_of_the_prior_and_of_an_old_summary():
    prior = rows_of(_summary(student="prior", method="none"), "vqa", Condition(name="full"), "prior", 0)
    assert {(r["method"], r["student"], r["label"]) for r in prior} == {("prior", "prior", "prior")}
    old = _summary()
    del old["dev"], old["best_step"]
    old["eval"] = {"eval": {"vqa_accuracy": 45.0, "ms_per_example": 2.0}}
    (row,) = rows_of(old, "vqa", Condition(name="full"), "kd", 0)
    assert (row["dev"], row["best_step"], row["control"], row["method"]) == (None, None, None, "kd")


def _cell(label: str, needs: tuple[str, ...] = (), seed: int = 0) -> RunCell:
    keys = frozenset(("vqa", "full", need, 0) for need in needs)
    return RunCell("vqa", Condition(name="full"), label, seed, keys)


def test_matrix_starts_a_cell_after_the_runs_it_needs():
    teacher, dide, other = _cell("none"), _cell("dide", ("none",)), _cell("kd", seed=1)
    matrix = Matrix([teacher, dide, other], finished=set())
    assert matrix.ready() == [teacher, other]  # dide waits for its teacher
    matrix.start(teacher)
    matrix.start(other)
    assert matrix.ready() == []
    matrix.finish(other)
    assert matrix.ready() == []
    matrix.finish(teacher)
    assert matrix.ready() == [dide] and matrix.number(dide) == "[2/3]"
    # a teacher run done in an earlier invocation counts as finished
    assert Matrix([teacher, dide], finished={teacher.key}).ready() == [dide]


def test_teacher_references_in_a_cycle_stop_before_any_run(tmp_path):
    spec = _spec()

    def taught_by(label: str) -> MethodEntry:
        teacher = {"kind": "fusion", "pretrained": f"run:full/{label}/seed0"}
        return MethodEntry(method={"name": "dide", "teachers": {"t": teacher}}, student={"kind": "dual"})

    spec.methods = {"a": taught_by("b"), "b": taught_by("a")}
    spec.conditions = spec.conditions[:1]
    with pytest.raises(ConfigError) as err:
        run_protocol(spec, tmp_path / "p")
    assert str(err.value) == (
        "teacher references of snli_ve full a seed 0, snli_ve full b seed 0 wait on each other; fix: make no run "
        "take its teacher from a run that (directly or not) takes its teacher from it"
    )


def test_every_cell_config_is_checked_before_the_first_run(tmp_path):
    spec = _spec()
    spec.methods["prior"] = MethodEntry(method={"name": "kd"}, student={"kind": "prior"})
    with pytest.raises(ConfigError, match="student.kind prior .* but method.name is 'kd'"):
        run_protocol(spec, tmp_path / "p")
    assert not (tmp_path / "p/results.jsonl").exists()


def _small_spec(methods: dict, jobs: int = 1) -> ProtocolConfig:
    base = tiny_tree("snli_ve", train={"threads": 1})
    base.pop("method")
    return ProtocolConfig.model_validate(
        {"name": "j", "base": base, "tasks": ["snli_ve"], "shift": False, "methods": methods, "jobs": jobs}
    )


def _without_timings(rows: list[dict]) -> set[str]:
    return {
        json.dumps(
            {k: v for k, v in r.items() if k not in ("seconds", "eval_ms_per_example", "eval_deploy_ms_per_example")}
        )
        for r in rows
    }


def test_two_jobs_give_the_rows_of_one_and_a_dependent_run_waits(tmp_path):
    methods = {
        "none": {"method": {"name": "none"}},
        "prior": {"student": {"kind": "prior"}},
        "dide": {
            "method": {"name": "dide", "teachers": {"vilt": {"kind": "fusion", "pretrained": "run:full/none/seed0"}}},
            "student": {"kind": "dual"},
        },
    }
    one = run_protocol(_small_spec(methods), tmp_path / "one")
    two = run_protocol(_small_spec(methods, jobs=2), tmp_path / "two")
    rows = read_results(two)
    assert _without_timings(rows) == _without_timings(read_results(one))
    assert {(r["label"], r["method"], r["student"]) for r in rows} == {
        ("none", "none", "fusion"),
        ("prior", "prior", "prior"),
        ("dide", "dide", "dual"),
    }
    runs = tmp_path / "two/runs/snli_ve/full"
    teacher_done = (runs / "none/seed0/summary.json").stat().st_mtime_ns
    assert (runs / "dide/seed0/config.yaml").stat().st_mtime_ns >= teacher_done  # dide began after its teacher
    order = [r["label"] for r in rows if r["metric"] == "accuracy"]
    assert order.index("dide") > order.index("none")  # rows are appended as runs finish


def test_a_failing_run_stops_the_protocol_with_its_error_and_the_others_finish(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    methods = {"none": {"method": {"name": "none"}}, "broken": {"student": {"pretrained": str(missing)}}}
    with pytest.raises(ConfigError) as err:
        run_protocol(_small_spec(methods, jobs=2), tmp_path / "p")
    assert str(err.value).startswith(f"student.pretrained '{missing}' is not a folder")
    assert {r["label"] for r in read_results(tmp_path / "p/results.jsonl")} == {"none"}  # ran beside it, kept
    before = (tmp_path / "p/results.jsonl").read_text()
    del methods["broken"]
    run_protocol(_small_spec(methods, jobs=2), tmp_path / "p")  # continues: nothing left to run
    assert (tmp_path / "p/results.jsonl").read_text() == before


def test_per_task_and_per_condition_overrides_reach_the_run_config(tmp_path):
    from vldistill.protocol.runner import ProtocolConfig, experiment

    spec = ProtocolConfig.model_validate(
        {
            "base": {"data": {"root": "world"}, "train": {"max_steps": 600, "lr": 1e-3}},
            "tasks": ["vqa", "snli_ve"],
            "per_task": {"vqa": {"data": {"dev_holdout": 750}}},
            "conditions": [{"name": "full"}, {"name": "low", "fraction": 0.1, "train": {"max_steps": 400}}],
            "methods": {"none": {}},
        }
    )
    full, low = spec.conditions
    vqa_full = experiment(spec, "vqa", full, "none", 0, tmp_path)
    assert vqa_full.data.dev_holdout == 750 and vqa_full.train.max_steps == 600
    vqa_low = experiment(spec, "vqa", low, "none", 1, tmp_path)
    assert vqa_low.train.max_steps == 400 and vqa_low.train.lr == 1e-3 and vqa_low.data.fraction == 0.1
    snli = experiment(spec, "snli_ve", low, "none", 0, tmp_path)
    assert snli.data.dev_holdout is None and snli.data.dev_split == "dev" and snli.train.max_steps == 400


def test_per_task_must_name_a_task_of_the_protocol():
    import pytest
    from pydantic import ValidationError

    from vldistill.protocol.runner import ProtocolConfig

    with pytest.raises(ValidationError, match="per_task names nlvr2, not in tasks"):
        ProtocolConfig.model_validate({"base": {}, "tasks": ["vqa"], "per_task": {"nlvr2": {}}, "methods": {}})


def test_a_teacher_reference_can_name_the_cells_own_seed(tmp_path):
    from vldistill.protocol.runner import ProtocolConfig, experiment, run_reference

    assert run_reference("run:full/none/seed{seed}", "vqa", 2) == ("vqa", "full", "none", 2)
    spec = ProtocolConfig.model_validate(
        {
            "base": {"data": {"root": "world"}},
            "tasks": ["vqa"],
            "methods": {
                "none": {},
                "dide": {
                    "method": {
                        "name": "dide",
                        "teachers": {"t": {"kind": "fusion", "pretrained": "run:full/none/seed{seed}"}},
                    },
                    "student": {"kind": "dual"},
                },
            },
            "seeds": [0, 1],
        }
    )
    (tmp_path / "runs" / "vqa" / "full" / "none" / "seed1" / "final").mkdir(parents=True)
    cfg = experiment(spec, "vqa", spec.conditions[0], "dide", 1, tmp_path)
    assert cfg.method.teachers["t"].pretrained == str(tmp_path / "runs" / "vqa" / "full" / "none" / "seed1" / "final")
