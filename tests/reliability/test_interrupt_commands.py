"""Ctrl-C and SIGTERM end every command with one ``interrupted ...`` line and status 130 / 143.

Real processes, real signals. Before any training loop: the config is a named pipe (FIFO), so the
process is, for certain, inside its command (reading the config) when the signal comes. Within a
protocol's training loop: as ``test_interrupt.py`` does for ``vldistill train``. How to continue is
the command's own: ``--resume`` for train, rerunning the same command for protocol and demo, nothing
for the others.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_configs import tiny_tree

from vldistill.protocol.runner import read_results
from vldistill.training import checkpoint as ckpt

RERUN = "rerun the same command to continue"


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vldistill", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        start_new_session=True,  # its own process group, as a shell job has
    )


def _signal(proc: subprocess.Popen[str], signum: int) -> None:
    """Ctrl-C as a terminal sends it (the whole process group); SIGTERM as a scheduler does (the process)."""
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)


def _wait_blocked(proc: subprocess.Popen[str], seconds: float = 10.0) -> None:
    """Wait until ``proc`` sleeps in a pipe read (Linux ``/proc/PID/wchan``), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    wchan = Path(f"/proc/{proc.pid}/wchan")
    while time.monotonic() < deadline and wchan.is_file() and "pipe" not in wchan.read_text():
        time.sleep(0.01)


def _open_writer(fifo: Path, proc: subprocess.Popen[str]) -> int:
    """Our end of ``fifo``, opened once ``proc`` has opened it for reading; held open, ``proc`` stays in its read."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:  # ENXIO: nobody reads it yet
            if err.errno != errno.ENXIO or proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@pytest.mark.parametrize(
    ("command", "name", "line"),
    [
        (["plan"], "SIGINT", "interrupted (SIGINT)"),
        (["train", "--out", "{tmp}/run"], "SIGTERM", "interrupted (SIGTERM); continue with --resume"),
        (["protocol", "--out", "{tmp}/protocol"], "SIGINT", f"interrupted (SIGINT); {RERUN}"),
    ],
)
def test_a_signal_before_any_step_ends_the_command_with_one_line(command, name, line, tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    verb, *options = command
    proc = _start(verb, str(fifo), *(o.format(tmp=tmp_path) for o in options))
    writer = _open_writer(fifo, proc)
    try:
        # Once blocked in its read (wchan), not in the instant its open() of the FIFO returns: a SIGTERM to
        # `train` in that instant was seen lost once in ~5 suite runs (not yet understood; see the closing note).
        _wait_blocked(proc)
        _signal(proc, signal.Signals[name])
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(writer)
    assert (proc.returncode, out, err) == (128 + signal.Signals[name], "", line + "\n")


def test_typer_exit_keeps_its_status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    import vldistill.protocol.report
    from vldistill.cli import main

    def exit_3(_folder: Path) -> None:
        raise typer.Exit(3)

    monkeypatch.setattr(vldistill.protocol.report, "write_report", exit_3)
    monkeypatch.setattr(sys, "argv", ["vldistill", "report", "somewhere"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 3
    assert capsys.readouterr().err == ""


def test_the_handlers_come_back_after_main(monkeypatch: pytest.MonkeyPatch) -> None:
    from vldistill.cli import main

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "argv", ["vldistill", "--version"])
    main()
    assert {s: signal.getsignal(s) for s in before} == before


def _protocol(folder: Path) -> Path:
    base = tiny_tree(
        "snli_ve",
        data={"max_train": 96},
        train={"epochs": 2, "checkpoint_every": None, "threads": 1, "log_every": 1},
    )
    base.pop("method")
    spec = {"name": "p", "base": base, "tasks": ["snli_ve"], "methods": {"none": {"method": {"name": "none"}}}}
    path = folder / "protocol.yaml"
    path.write_text(yaml.safe_dump({**spec, "shift": False, "seeds": [0]}))
    return path


def test_an_interrupted_protocol_says_rerun_and_continues_when_rerun(tmp_path: Path) -> None:
    spec, out = _protocol(tmp_path), tmp_path / "protocol"
    run = out / "runs" / "snli_ve" / "full" / "none" / "seed0"
    proc = _start("protocol", str(spec), "--out", str(out))
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        rows = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").is_file() else ""
        if rows.count('"kind": "step"') >= 2:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGSTOP)  # frozen while it is signalled: it stops early in the first epoch
    proc.send_signal(signal.SIGTERM)
    os.killpg(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)

    (stopped,) = [p for p in (run / "checkpoints").glob(f"{ckpt.PREFIX}*") if p.is_dir()]
    step = int(stopped.name[len(ckpt.PREFIX) :])
    assert proc.returncode == 143, err[-2000:]
    assert err.splitlines() == ["[1/1] snli_ve full none seed 0", f"interrupted at step {step} (SIGTERM); {RERUN}"]
    assert not (out / "results.jsonl").is_file() or read_results(out / "results.jsonl") == []

    proc = _start("protocol", str(spec), "--out", str(out))  # the same command, no option
    out_text, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert f"resumed from {stopped.name}" in out_text
    rows = read_results(out / "results.jsonl")
    assert {(r["task"], r["condition"], r["label"], r["seed"]) for r in rows} == {("snli_ve", "full", "none", 0)}


def test_an_interrupted_demo_says_rerun(tmp_path: Path) -> None:
    proc = _start("demo", "--quick", "--out", str(tmp_path / "demo"), env={"VLDISTILL_CACHE": str(tmp_path / "c")})
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "[1/4] generated world ...": it is generating the world now
    assert first.startswith("[1/4] generated world"), first
    _signal(proc, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (130, "", f"interrupted (SIGINT); {RERUN}\n")
