"""Nothing lost: a ``vldistill train`` process killed with SIGKILL resumes to the very same weights.

Four moments: just after the first checkpoint is published, in the middle of the second epoch, while
a checkpoint is being written (its ``.tmp-step-*`` folder exists), and while the checkpoint beyond
``keep_checkpoints`` is being removed (one more ``step-*`` folder than kept). After each kill: every
published checkpoint is whole, no ``final/`` exists, and ``--resume`` resumes from a whole checkpoint
and ends with ``final/model.safetensors`` equal, bit for bit, to that of a run that was never killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from reliability.corpus_files import write_config
from safetensors.torch import load_file
from tiny_configs import tiny_tree

from vldistill.training import checkpoint as ckpt

STEPS = 12  # 48 examples / batch 8 = 6 steps per epoch, 2 epochs
KEEP = 3


def _config(folder: Path) -> Path:
    tree = tiny_tree(
        "snli_ve",
        data={"max_train": 48},
        train={"epochs": 2, "checkpoint_every": 1, "keep_checkpoints": KEEP, "threads": 1},
    )
    return write_config(folder / "tiny.yaml", tree)


def _train(config: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "vldistill", "train", str(config), "--out", str(out), "--no-progress", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The config and the final weights of a run that was never killed."""
    folder = tmp_path_factory.mktemp("sigkill")
    config = _config(folder)
    _finish(_train(config, folder / "reference"))
    return config, _weights(folder / "reference")


def _step_dirs(ckpts: Path) -> list[str]:
    try:
        return os.listdir(ckpts)
    except FileNotFoundError:
        return []


def _published(step: int) -> Callable[[Path], bool]:
    name = f"{ckpt.PREFIX}{step:08d}"
    return lambda ckpts: name in _step_dirs(ckpts)


def _writing(min_step: int) -> Callable[[Path], bool]:
    """True while the temporary folder of a checkpoint of step >= ``min_step`` exists."""
    pattern = re.compile(rf"\.tmp-{ckpt.PREFIX}(\d+)-")

    def check(ckpts: Path) -> bool:
        return any((m := pattern.match(name)) and int(m.group(1)) >= min_step for name in _step_dirs(ckpts))

    return check


def _removing_old(ckpts: Path) -> bool:
    """True between publishing a checkpoint and finishing the removal of the one beyond ``keep``."""
    return sum(name.startswith(ckpt.PREFIX) for name in _step_dirs(ckpts)) > KEEP


MOMENTS = {
    "after_first_checkpoint": _published(1),
    "mid_epoch_2": _published(8),  # epoch 2 runs steps 7..12
    "during_checkpoint_write": _writing(4),
    "while_removing_an_old_checkpoint": _removing_old,
}


def _kill_when(proc: subprocess.Popen[str], ckpts: Path, moment: Callable[[Path], bool]) -> None:
    """SIGKILL ``proc`` at a moment when ``moment(ckpts)`` holds.

    The process is frozen (SIGSTOP) as soon as the moment is seen and killed only if the moment still
    holds while it is frozen, so a short window (a checkpoint write) is hit exactly, not by luck.
    """
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if moment(ckpts):
            proc.send_signal(signal.SIGSTOP)
            if moment(ckpts):
                proc.send_signal(signal.SIGKILL)
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.0002)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill moment"


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_then_resume_gives_the_never_killed_weights(moment: str, reference, tmp_path: Path) -> None:
    config, expected = reference
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    _kill_when(_train(config, run), ckpts, MOMENTS[moment])

    assert not (run / "final").exists()
    published = sorted(p for p in ckpts.glob(f"{ckpt.PREFIX}*") if p.is_dir())
    assert published, "the kill came after the first checkpoint was published"
    for path in published:  # either a whole checkpoint or none
        assert ckpt.verify(path) is None, path
    half = [p.name for p in ckpts.glob(f".tmp-{ckpt.PREFIX}*")]
    if moment == "during_checkpoint_write":
        assert half, "the kill came while a checkpoint was being written"
    newest = int(published[-1].name[len(ckpt.PREFIX) :])

    out = _finish(_train(config, run, "--resume"))
    # never a half one used: the run resumes from the newest whole checkpoint
    assert f"resumed from {ckpt.PREFIX}{newest:08d}" in out, out
    assert newest < STEPS
    got = _weights(run)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
