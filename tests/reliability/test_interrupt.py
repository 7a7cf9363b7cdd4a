"""Ctrl-C and SIGTERM: a ``vldistill train`` process saves at the next step, exits 130 / 143, and resumes exactly.

A real subprocess gets a real signal in the middle of its first epoch, where no periodic checkpoint
would be (checkpoints only at epoch ends here). Ctrl-C goes to the whole process group, as a terminal
sends it (the DataLoader worker included: ``train.num_workers: 1``); SIGTERM to the process alone, as
a scheduler or ``torchrun`` sends it. The process must save a checkpoint at the next step boundary,
print one line, exit with 128 + the signal's number, and ``--resume`` must end with the weights of a
run that was never interrupted, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability.corpus_files import write_config
from safetensors.torch import load_file
from tiny_configs import tiny_tree

from vldistill.training import checkpoint as ckpt

STEPS_PER_EPOCH = 12  # 96 examples / batch 8


def _config(folder: Path, workers: int) -> Path:
    tree = tiny_tree(
        "snli_ve",
        data={"max_train": 96},
        train={"epochs": 2, "checkpoint_every": None, "threads": 1, "num_workers": workers, "log_every": 1},
    )
    return write_config(folder / f"tiny-{workers}.yaml", tree)


def _train(config: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vldistill", "train", str(config), "--out", str(out), "--no-progress", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,  # its own process group, as a shell job has
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def _logged_steps(run: Path) -> int:
    try:
        return sum('"kind": "step"' in line for line in (run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("interrupt")
    proc = _train(_config(folder, 0), folder / "reference")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return folder, _weights(folder / "reference")


@pytest.mark.parametrize(("name", "workers"), [("SIGINT", 1), ("SIGTERM", 0)])
def test_a_signal_saves_at_the_next_step_exits_with_its_status_and_resume_is_exact(name, workers, reference, tmp_path):
    folder, expected = reference
    signum = signal.Signals[name]
    config = _config(folder, workers)  # num_workers may differ on resume: it does not change the updates
    run = tmp_path / "run"
    proc = _train(config, run)
    deadline = time.monotonic() + 240
    while _logged_steps(run) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGSTOP)  # frozen while it is signalled: the step it stops at is early
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: every process of the job
    else:
        proc.send_signal(signal.SIGTERM)
    os.killpg(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    (stopped,) = [p for p in (run / "checkpoints").glob(f"{ckpt.PREFIX}*") if p.is_dir()]
    step = int(stopped.name[len(ckpt.PREFIX) :])
    assert 2 <= step < STEPS_PER_EPOCH, step  # a step boundary mid-epoch: no periodic checkpoint is there
    assert ckpt.verify(stopped) is None
    assert err.strip().splitlines()[-1] == f"interrupted at step {step} ({name}); continue with --resume"
    assert "Traceback" not in err and not (run / "final").exists()

    proc = _train(config, run, "--resume")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"resumed from {stopped.name}" in out
    got = _weights(run)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # each step row once, and the epoch rows (at steps 12 and 24); SNLI-VE's dev evaluation at the last step
    assert [r["step"] for r in rows if r.get("kind") != "dev"] == [*range(1, 13), 12, *range(13, 25), 24]
    assert [r["step"] for r in rows if r.get("kind") == "dev"] == [24]
