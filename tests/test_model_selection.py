"""Model selection on the dev set: the best weights kept, early stopping, resumes that end as uninterrupted runs."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_configs import tiny_tree
from torch import nn

import vldistill.training.train as engine
from vldistill.config import parse_config
from vldistill.training import checkpoint as ckpt
from vldistill.training.interrupt import Interrupted
from vldistill.training.model_selection import ModelSelection
from vldistill.training.train import train

# ---------------------------------------------------------------- the selection state on its own


def test_evaluations_are_due_every_n_steps_and_at_the_last() -> None:
    every = ModelSelection(nn.Linear(1, 1), eval_every=4, patience=None, has_dev=True)
    last_only = ModelSelection(nn.Linear(1, 1), eval_every=None, patience=None, has_dev=True)
    no_dev = ModelSelection(nn.Linear(1, 1), eval_every=None, patience=None, has_dev=False)
    assert [s for s in range(1, 11) if every.due(s, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if last_only.due(s, 10)] == [10]
    assert [s for s in range(1, 11) if no_dev.due(s, 10)] == []
    assert (last_only.best, no_dev.best) == (None, None)  # no copy of the weights when nothing is selected


def test_the_first_best_score_keeps_its_weights_and_patience_counts_evaluations_without_improvement() -> None:
    student = nn.Linear(2, 1)
    selection = ModelSelection(student, eval_every=1, patience=2, has_dev=True)
    kept = {}
    for step, score in enumerate([40.0, 55.0, 55.0, 50.0], start=1):
        with torch.no_grad():
            student.weight.fill_(step)  # the weights after `step`
        improved = selection.update(step, score, student)
        kept[step] = improved
        assert selection.stopped == (step == 4)
    assert kept == {1: True, 2: True, 3: False, 4: False}  # a tie is no improvement
    assert (float(selection.best_score), int(selection.best_step)) == (55.0, 2)
    assert (int(selection.evaluations), int(selection.since_best)) == (4, 2)
    selection.restore_best(student)
    assert student.weight.tolist() == [[2.0, 2.0]]
    # the state is a state_dict: what a checkpoint saves and a resumed run loads
    restored = ModelSelection(nn.Linear(2, 1), eval_every=1, patience=2, has_dev=True)
    restored.load_state_dict(selection.state_dict())
    assert (int(restored.best_step), restored.stopped, restored.best.weight.tolist()) == (2, True, [[2.0, 2.0]])


def test_without_eval_every_the_last_evaluation_is_the_selected_one() -> None:
    student = nn.Linear(2, 1)
    selection = ModelSelection(student, eval_every=None, patience=None, has_dev=True)
    assert selection.update(9, 70.0, student) and selection.update(10, 20.0, student)
    assert (float(selection.best_score), int(selection.best_step), selection.stopped) == (20.0, 10, False)


# ---------------------------------------------------------------- selection inside a training run


def _rows(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind", "epoch") == kind]


def _student_weights(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _untimed(summary: dict) -> dict:
    out = {k: v for k, v in summary.items() if k != "seconds"}
    out["eval"] = {
        s: {m: v for m, v in ms.items() if not m.endswith("ms_per_example")} for s, ms in summary["eval"].items()
    }
    return out


def _cfg(**train):
    tree = tiny_tree(
        "snli_ve", train={"epochs": 3, "log_every": 1, "checkpoint_every": 1, "keep_checkpoints": 50, **train}
    )
    return parse_config(tree, "test")


def test_the_final_student_is_the_best_dev_evaluation_and_early_stopping_ends_the_run(tmp_path, monkeypatch):
    scores = iter([40.0, 55.0, 50.0, 55.0, 52.0, 99.0])  # the 6th is never asked for: patience 3 stops at step 5

    def scripted(accelerator, evaluate, student, dev):
        return {"accuracy": next(scores), "accuracy/class/neutral": 0.0}

    monkeypatch.setattr(engine, "dev_evaluation", scripted)
    run = tmp_path / "run"
    summary = train(_cfg(eval_every=1, early_stopping=3), run, show_progress=False)
    assert (summary["steps"], summary["best_step"], summary["dev_evaluations"]) == (5, 2, 5)
    assert summary["dev"] == {"accuracy": 55.0, "accuracy/class/neutral": 0.0}
    dev_rows = _rows(run, "dev")
    assert [(r["step"], r["dev"]["accuracy"], r["best"]) for r in dev_rows] == [
        (1, 40.0, True),
        (2, 55.0, True),
        (3, 50.0, False),
        (4, 55.0, False),
        (5, 52.0, False),
    ]
    assert [r["epoch"] for r in _rows(run, "epoch")] == [1, 2]  # stopped in epoch 2, which still closes
    final = load_file(str(run / "final" / "model.safetensors"))
    at = {s: load_file(str(run / "checkpoints" / f"step-{s:08d}" / "weights.safetensors")) for s in (2, 5)}
    assert all(torch.equal(final[k], v) for k, v in _student_weights(at[2], "model.student.model.").items())
    assert not all(torch.equal(final[k], v) for k, v in _student_weights(at[5], "model.student.model.").items())
    # the kept copy is checkpointed with the run
    assert all(torch.equal(final[k], v) for k, v in _student_weights(at[5], "selection.best.model.").items())


SCRIPTED_DEV = {2: 13.96, 4: 65.29, 6: 14.49, 8: 21.12}  # dev accuracy after each evaluated step


def _script_dev_by_step(monkeypatch) -> None:
    """Dev scores scripted by the step just trained (so a resumed run sees the same scores as the uninterrupted one)."""
    real_select, at = engine.select_on_dev, {}

    def select(selection, accelerator, evaluate, student, dev, pos):
        at["step"] = pos.step
        return real_select(selection, accelerator, evaluate, student, dev, pos)

    def scripted(accelerator, evaluate, student, dev):
        return {"accuracy": SCRIPTED_DEV[at["step"]]}

    monkeypatch.setattr(engine, "select_on_dev", select)
    monkeypatch.setattr(engine, "dev_evaluation", scripted)


@pytest.mark.parametrize(
    "how",
    ["killed between evaluations", "killed during an evaluation", "SIGINT", "killed after stopping early", "real dev"],
)
def test_a_resumed_run_selects_and_ends_as_the_uninterrupted_one(tmp_path, monkeypatch, how):
    """Dev evaluations at steps 2, 4, 6, 8 (of 9); patience 2. With the scripted scores the best is step 4 and the
    run stops after step 8; each interruption below happens with a best-so-far in the checkpointed state."""

    class Killed(BaseException):
        pass

    if how != "real dev":
        _script_dev_by_step(monkeypatch)
    cfg = _cfg(eval_every=2, early_stopping=2)
    reference = train(cfg, tmp_path / "reference", show_progress=False)
    if how != "real dev":
        assert (reference["best_step"], reference["steps"], reference["dev_evaluations"]) == (4, 8, 4)
        assert [r["dev"]["accuracy"] for r in _rows(tmp_path / "reference", "dev")] == [13.96, 65.29, 14.49, 21.12]
    real_save, real_dev, real_loss = ckpt.save_checkpoint, engine.dev_evaluation, engine.task_loss
    calls = {"loss": 0, "saves": []}

    def save(root, step, *args, **kwargs):
        result = real_save(root, step, *args, **kwargs)
        calls["saves"].append(step)
        if how in ("killed between evaluations", "real dev") and step == 5:
            raise Killed
        if how == "killed after stopping early" and calls["saves"].count(8) == 2:
            raise Killed  # the epoch's checkpoint after the stop at step 8, before final/ is written
        return result

    def dev_dies(accelerator, evaluate, student, dev):
        if how == "killed during an evaluation" and calls["loss"] == 6:
            raise Killed  # in the evaluation after step 6, before that step's checkpoint
        return real_dev(accelerator, evaluate, student, dev)

    def loss(*args):
        calls["loss"] += 1
        if how == "SIGINT" and calls["loss"] == 5:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during step 5: saved at its end, between evaluations
        return real_loss(*args)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    monkeypatch.setattr(engine, "dev_evaluation", dev_dies)
    monkeypatch.setattr(engine, "task_loss", loss)
    run = tmp_path / "run"
    with pytest.raises(Interrupted if how == "SIGINT" else Killed):
        train(cfg, run, show_progress=False)
    assert not (run / "final").exists()
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    monkeypatch.setattr(engine, "dev_evaluation", real_dev)
    resumed_steps = []

    def counted(*args):
        resumed_steps.append(1)
        return real_loss(*args)

    monkeypatch.setattr(engine, "task_loss", counted)
    resumed = train(cfg, run, resume=True, show_progress=False)
    # from the checkpoint of step 5 (of the stop, after it: nothing left to train)
    assert len(resumed_steps) == (0 if how == "killed after stopping early" else reference["steps"] - 5)
    assert _untimed(resumed) == _untimed(reference)
    assert _rows(run, "dev") == _rows(tmp_path / "reference", "dev")
    a = load_file(str(run / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_budget_runs_past_one_epoch_of_a_small_subset(tmp_path):
    """24 examples / batch 8 = 3 steps an epoch; max_steps 7 runs into a third epoch, the schedule spans 7 steps."""
    cfg = parse_config(
        tiny_tree("snli_ve", train={"max_steps": 7, "warmup_ratio": 0, "log_every": 1, "checkpoint_every": None}),
        "t",
    )
    run = tmp_path / "run"
    summary = train(cfg, run, show_progress=False)
    assert (summary["steps"], summary["best_step"], summary["dev_evaluations"]) == (7, 7, 1)
    assert [r["lr"] for r in _rows(run, "step")] == pytest.approx([1e-3 * (7 - k) / 7 for k in range(7)])
    assert [(r["epoch"], r["step"]) for r in _rows(run, "epoch")] == [(1, 3), (2, 6), (3, 7)]
    assert [r["step"] for r in _rows(run, "dev")] == [7] and set(summary["dev"]) == {
        "accuracy",
        "accuracy/class/contradiction",
        "accuracy/class/entailment",
        "accuracy/class/neutral",
    }


def test_without_a_dev_set_each_epoch_but_the_last_is_a_learning_curve_on_the_evaluation_split(tmp_path):
    cfg = parse_config(tiny_tree("vqa", train={"epochs": 3, "checkpoint_every": None}), "t")
    summary = train(cfg, tmp_path / "run", show_progress=False)
    epochs = _rows(tmp_path / "run", "epoch")
    assert [sorted(r["eval"]) for r in epochs] == [["eval"], ["eval"], []]
    assert "dev" not in summary and (summary["dev_evaluations"], summary["best_step"]) == (0, summary["steps"])
    assert set(summary["eval"]) == {"eval", "eval:shuffled"}


def test_the_processing_cache_changes_no_loss_and_no_score(tmp_path, monkeypatch):
    """Every step's loss, the final weights and every evaluation are the same without the cache."""
    cfg = _cfg(eval_every=2, checkpoint_every=None)
    cached = train(cfg, tmp_path / "cached", show_progress=False)
    monkeypatch.setattr(engine, "CachingProcessor", lambda processor: processor)
    plain = train(cfg, tmp_path / "plain", show_progress=False)
    assert [r["loss"] for r in _rows(tmp_path / "cached", "step")] == [
        r["loss"] for r in _rows(tmp_path / "plain", "step")
    ]
    assert _rows(tmp_path / "cached", "dev") == _rows(tmp_path / "plain", "dev")
    assert _untimed(cached) == _untimed(plain)
    a = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
