"""transformers' "Loading weights" progress bars stay out of every command's stderr (set once, in ``main``).

Real processes on a tiny run whose student is a saved checkpoint (``student.pretrained``), the case
where transformers draws a bar per ``from_pretrained``. ``VLDISTILL_VERBOSE=1`` lets it through: the
control that shows these commands do draw one when nothing stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.models.students import build_student, save_student, student_processor

SRC = Path(__file__).resolve().parents[2] / "src"
BAR = "Loading weights"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SNLI-VE config whose student is a saved fusion student (a folder with weights and processor)."""
    folder = tmp_path_factory.mktemp("quiet")
    cfg = parse_config(tiny_tree("snli_ve"), "t")
    save_student(build_student(cfg.student, "snli_ve", 3), folder / "student", student_processor(cfg.student))
    tree = tiny_tree("snli_ve", data={"max_train": 16, "max_eval": 8}, student={"pretrained": str(folder / "student")})
    path = folder / "pretrained.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _vldistill(*args: str, verbose: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    for name in ("VLDISTILL_VERBOSE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        env.pop(name, None)
    if verbose:
        env["VLDISTILL_VERBOSE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "vldistill", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_plan_and_train_print_no_loading_bars(config: Path, tmp_path: Path) -> None:
    shown = _vldistill("plan", str(config), verbose=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert BAR in shown.stderr  # the control: this load draws a bar when nothing stops it

    plan = _vldistill("plan", str(config))
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "student" in plan.stdout and plan.stderr == ""

    train = _vldistill("train", str(config), "--out", str(tmp_path / "run"), "--no-progress")
    assert train.returncode == 0, train.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert BAR not in train.stderr and "%|" not in train.stderr, train.stderr
