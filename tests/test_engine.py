"""The engine's pieces: accumulation windows, run-folder rules, metrics trimming, stop signals, progress."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from vldistill.errors import ConfigError
from vldistill.training.engine import AccumulationPlan
from vldistill.training.interrupt import Interrupted, StopSignal, StopSignals
from vldistill.training.progress import TrainProgress
from vldistill.training.run_folder import Position, changed_keys, check_reuse, prepare, read_rows, trim_rows

# ------------------------------------------------------------------------------------- accumulation


def test_accumulation_weights_each_micro_batch_by_its_share_of_the_window():
    # 90 examples, batch 8: 11 batches of 8 and one of 2; windows of 2 batches, the last one 8 + 2.
    plan = AccumulationPlan(examples=90, batch_size=8, accum=2)
    assert (plan.batches, plan.steps_per_epoch) == (12, 6)
    assert [plan.at(b) for b in range(12)] == [(0.5, False), (0.5, True)] * 5 + [(0.8, False), (0.2, True)]
    # 88 examples: 11 batches; the last window holds one batch, which alone is the whole step.
    plan = AccumulationPlan(examples=88, batch_size=8, accum=2)
    assert (plan.batches, plan.steps_per_epoch, plan.at(9), plan.at(10)) == (11, 6, (0.5, True), (1.0, True))
    # 3 per window, 7 batches of 4 (the last 1 example): windows 4+4+4, 4+4+4, 1.
    plan = AccumulationPlan(examples=25, batch_size=4, accum=3)
    assert [plan.at(b) for b in (0, 2, 3, 5, 6)] == [(1 / 3, False), (1 / 3, True), (1 / 3, False), (1 / 3, True),
                                                     (1.0, True)]  # fmt: skip
    # no accumulation: every batch is a step of weight 1
    assert {AccumulationPlan(examples=10, batch_size=4, accum=1).at(b) for b in range(3)} == {(1.0, True)}


# ------------------------------------------------------------------------------------- run folder


def test_changed_keys_names_nested_keys_with_both_values():
    old = {"train": {"lr": 0.001, "seed": 0}, "data": {"task": "vqa", "max_train": 24}, "name": "a"}
    new = {"train": {"lr": 0.002, "seed": 0}, "data": {"task": "vqa", "max_train": None}, "name": "a"}
    assert changed_keys(old, new) == {"data.max_train": (24, None), "train.lr": (0.001, 0.002)}
    assert changed_keys(old, old) == {}


def _run_folder(tmp_path: Path, tree: dict) -> Path:
    run = tmp_path / "run"
    prepare(run, tree, resume=False, overwrite=False)
    (run / "checkpoints" / "step-00000003").mkdir(parents=True)
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_text("old")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "notes.txt").write_text("mine")
    return run


TREE = {"name": "t", "train": {"lr": 0.001, "log_every": 1, "seed": 0}, "data": {"task": "vqa"}}


def test_a_new_run_into_a_run_folder_is_refused_unless_overwrite(tmp_path):
    run = _run_folder(tmp_path, TREE)
    assert yaml.safe_load((run / "config.yaml").read_text()) == TREE
    with pytest.raises(ConfigError, match=r"already holds a run \(config.yaml, checkpoints, tensorboard, metrics"):
        check_reuse(run, TREE, resume=False, overwrite=False, harmless=frozenset())
    with pytest.raises(ConfigError, match="give one of them"):
        check_reuse(run, TREE, resume=True, overwrite=True, harmless=frozenset())
    assert check_reuse(run, TREE, resume=False, overwrite=True, harmless=frozenset()) == {}
    new = {**TREE, "name": "second"}
    prepare(run, new, resume=False, overwrite=True)
    # the old run is gone, the user's own file stays, the new config is in place
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "second"
    assert check_reuse(tmp_path / "fresh", TREE, resume=False, overwrite=False, harmless=frozenset()) == {}


def test_resume_refuses_meaningful_changes_and_lists_harmless_ones(tmp_path):
    run = _run_folder(tmp_path, TREE)
    harmless = frozenset({"train.log_every", "name"})
    changed = {**TREE, "train": {**TREE["train"], "lr": 0.002, "log_every": 5}, "data": {"task": "snli_ve"}}
    with pytest.raises(ConfigError) as err:
        check_reuse(run, changed, resume=True, overwrite=False, harmless=harmless)
    message = str(err.value)
    assert 'data.task ("vqa" -> "snli_ve"), train.lr (0.001 -> 0.002)' in message
    assert "train.log_every" not in message and str(run / "config.yaml") in message and "\n" not in message
    allowed = {**TREE, "name": "u", "train": {**TREE["train"], "log_every": 5}}
    assert check_reuse(run, allowed, resume=True, overwrite=False, harmless=harmless) == {
        "name": ("t", "u"),
        "train.log_every": (1, 5),
    }
    # without a checkpoint there is nothing to contradict: resume starts afresh with the new config
    # and drops the stale logs of the attempt that never reached a checkpoint
    (run / "checkpoints" / "step-00000003").rmdir()
    assert check_reuse(run, changed, resume=True, overwrite=False, harmless=harmless) == {}
    prepare(run, changed, resume=True, overwrite=False)
    assert not (run / "tensorboard").exists() and not (run / "metrics.jsonl").exists()
    assert yaml.safe_load((run / "config.yaml").read_text()) == changed


def test_a_resume_drops_the_rows_logged_after_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"kind": "step", "step": 1, "epoch": 1},
        {"kind": "step", "step": 2, "epoch": 1},
        {"epoch": 1, "step": 2, "eval": {}},
        {"kind": "step", "step": 3, "epoch": 2},
        {"kind": "step", "step": 4, "epoch": 2},
        {"epoch": 2, "step": 4, "eval": {}},  # written before the kill, its checkpoint was not
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trim_rows(path, Position(epoch=1, batch=1, step=3))
    assert read_rows(path) == rows[:4]
    trim_rows(path, Position(epoch=0, batch=0, step=0))
    assert read_rows(path) == []


# ----------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_is_recorded_not_raised_and_the_handlers_come_back(signum, code):
    before = signal.getsignal(signum)
    with StopSignals() as stop:
        assert stop.requested() == 0
        os.kill(os.getpid(), signum)
        assert stop.requested() == signum  # recorded; the loop decides when to stop
        with pytest.raises(StopSignal) as second:  # a second signal does not wait
            os.kill(os.getpid(), signum)
        assert second.value.signum == signum and isinstance(second.value, KeyboardInterrupt)
    assert signal.getsignal(signum) is before
    name = signal.Signals(signum).name
    stopped = Interrupted(signum, step=12)
    assert (stopped.exit_code, str(stopped)) == (code, f"interrupted at step 12 ({name})")
    hinted = stopped.with_hint("continue with --resume")
    assert (hinted.exit_code, str(hinted)) == (code, f"interrupted at step 12 ({name}); continue with --resume")
    assert str(Interrupted(signum, hint="rerun it")) == f"interrupted ({name}); rerun it"


# ---------------------------------------------------------------------------------------- progress


def test_the_first_progress_frame_shows_no_nan_loss():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    with TrainProgress(enabled=True, total=4, console=console) as progress:
        progress._progress.refresh()
        first = out.getvalue()
        progress.advance(1.25, 0)
        progress.advance(0.25, 0)
    assert "epoch 1" in first and "0/4" in first
    assert "nan" not in first.lower() and "loss" not in first
    assert "loss 1.1500" in out.getvalue()  # running average: 0.9 * 1.25 + 0.1 * 0.25
