"""The command line's console (``vldistill.console``): whole lines when not a terminal (e.g. a plan in a log)."""

from __future__ import annotations

import os
import sys

import pytest

from vldistill.console import PIPE_WIDTH, make_console
from vldistill.training.plan import Plan, render_plan


def test_render_plan_keeps_long_lines_whole_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()  # stdout is captured here: not a terminal
    assert console.width == PIPE_WIDTH
    student = {"kind": "fusion", "task": "vqa", "text_tokens": "4x11x32", "image_tokens": "4x16x32", "logits": "4x29"}
    link = {
        "term": "feature/clip/image",
        "teacher": "clip.image_tokens 4x50x768 (openai/clip-vit-base-patch16)",
        "projection": "Linear(32 -> 768)",
        "student": "image_tokens 4x16x32",
    }
    plan = Plan(method={"method": "clip_td"}, student=student, links=[link], losses={"task": 1.5}, parameters={"s": 1})
    render_plan(plan, console)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"student {student}"
    row = next(line for line in lines if "feature/clip/image" in line)
    assert all(str(value) in row for value in link.values()) and " - " in row
    assert lines[-2:] == ["  task 1.5", "parameters s: 1"]


def test_columns_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "70")
    assert make_console().width == 70


def test_a_terminal_keeps_its_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stdout", terminal)
        assert make_console().width < PIPE_WIDTH
    os.close(leader)
