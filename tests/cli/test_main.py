"""The ``vldistill`` entry point in a real process: usage errors, bare groups, ``--version``, pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from vldistill.cli import main
from vldistill.errors import ConfigError

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
        (
            ["protocol", "p.yaml", "--out", "x", "--jobs", "0"],
            "Invalid value for '--jobs': Input should be greater than or equal to 1; "
            "fix: see 'python -m vldistill protocol --help'",
        ),
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


def in_process(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple:
    """``(exit status, stdout, stderr)`` of the console script's entry point run in this process.

    For commands that import torch, which a fresh process takes seconds to do.
    """
    monkeypatch.setattr(sys, "argv", ["vldistill", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


@pytest.mark.parametrize("command", ["plan", "train"])
def test_a_protocol_file_given_to_plan_or_train_points_to_vldistill_protocol(command: str, monkeypatch, capsys) -> None:
    path = SRC.parent / "configs" / "protocol-paper.yaml"
    assert in_process([command, str(path)], monkeypatch, capsys) == (
        2,
        "",
        f"error: {path} is a protocol file (tasks x conditions x methods x seeds), not one experiment; "
        f"fix: run it with `vldistill protocol {path} --out DIR`\n",
    )


def test_set_error_names_the_option(monkeypatch, capsys) -> None:
    code, out, err = in_process(["plan", "--preset", "smoke", "--set", "train.epochs=abc"], monkeypatch, capsys)
    assert (code, out) == (2, "")
    assert err.startswith("error: --set train.epochs=abc: train.epochs: Input should be a valid integer")


def _nlvr2_dev(root: Path) -> Path:
    from PIL import Image

    (root / "dev").mkdir(parents=True)
    (root / "dev.json").write_text('{"identifier": "dev-0-0-1", "sentence": "Two dogs.", "label": "True"}\n')
    for side in ("img0", "img1"):
        Image.new("RGB", (8, 6)).save(root / "dev" / f"dev-0-0-{side}.png")
    return root


def test_long_lines_stay_whole_in_a_pipe(tmp_path: Path) -> None:
    """rich wraps at 80 columns when not writing to a terminal; the commands' output must not."""
    root = _nlvr2_dev(tmp_path / ("long-folder-name-" * 8))
    proc = vldistill("data", "check", "nlvr2", str(root), "--split", "dev")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"nlvr2 dev at {root}: ok"
    assert len(proc.stdout.splitlines()[0]) > 150


def test_columns_set_by_the_user_still_wraps(tmp_path: Path) -> None:
    root = _nlvr2_dev(tmp_path / ("long-folder-name-" * 8))
    proc = vldistill("data", "check", "nlvr2", str(root), "--split", "dev", columns="60")
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 60


def test_a_multi_line_message_prints_as_one_line(monkeypatch, capsys) -> None:
    """A teacher that cannot load quotes transformers' two-line hub error: still one ``error:`` line."""
    hub = "We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your internet connection."

    def cannot_load(cfg, batch_size=4):
        raise ConfigError(f"CLIP teacher 'org/clip': cannot load it ({hub}); fix: give a local model directory")

    monkeypatch.setattr("vldistill.training.plan.make_plan", cannot_load)
    assert in_process(["plan", "--preset", "smoke"], monkeypatch, capsys) == (
        2,
        "",
        "error: CLIP teacher 'org/clip': cannot load it (We couldn't connect to 'https://huggingface.co' to load "
        "the files. Check your internet connection.); fix: give a local model directory\n",
    )
