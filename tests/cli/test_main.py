"""The ``vldistill`` entry point in a real process: usage errors, bare groups, ``--version``, pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def vldistill(*args: str, columns: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m vldistill ARGS`` with this checkout's sources, stdout and stderr piped (not a terminal)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run(
        [sys.executable, "-m", "vldistill", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["traine"],
            "No such command 'traine'. Did you mean 'train', 'pretrain'?; fix: see 'python -m vldistill --help'",
        ),
        (["--bogus"], "No such option: --bogus; fix: see 'python -m vldistill --help'"),
        (
            ["train", "--bogus"],
            "No such option: --bogus (Possible options: --out); fix: see 'python -m vldistill train --help'",
        ),
        (["data", "check"], "Missing argument 'task'; fix: see 'python -m vldistill data check --help'"),
        (["data", "check", "vqa"], "Missing argument 'root'; fix: see 'python -m vldistill data check --help'"),
        (["report", "a", "b"], "Got unexpected extra argument(s) (b); fix: see 'python -m vldistill report --help'"),
        # click raises this one without a context: the fix names the program's help
        (["score", "vqa", "--questions"], "Option '--questions' requires an argument; fix: see 'vldistill --help'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], line: str) -> None:
    proc = vldistill(*args)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {line}\n")


@pytest.mark.parametrize("args", [[], ["data"], ["score"]])
def test_a_group_alone_prints_its_help_and_exits_2(args: list[str]) -> None:
    """As click (>= 8.2) does for ``no_args_is_help`` groups: the help, status 2, no traceback."""
    proc = vldistill(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"Usage: python -m vldistill {' '.join(args) + ' ' if args else ''}[OPTIONS] COMMAND" in proc.stdout
    assert "error" not in proc.stderr


def test_version_is_the_installed_distributions() -> None:
    proc = vldistill("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"vldistill {version('vldistill')}\n", "")


def test_help_exits_0() -> None:
    proc = vldistill("train", "--help")
    assert proc.returncode == 0 and "--set" in proc.stdout and proc.stderr == ""
