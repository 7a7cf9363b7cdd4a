"""Rich consoles for the command line's output: whole lines in logs and pipes.

rich wraps at the terminal's width, and when its stream is not a terminal (a log file, ``| grep``, CI)
at 80 columns, which splits paths, table rows and one-line messages. A console made here is as wide as
its terminal when it writes to one, and ``PIPE_WIDTH`` columns otherwise, so a line stays one line.
``COLUMNS`` set in the environment still wins (rich reads it).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 10_000
"""Columns of a console that does not write to a terminal: wider than any line the commands print."""


def _is_tty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def make_console(*, stderr: bool = False) -> Console:
    """A rich Console on stdout (or stderr) that wraps only at a real terminal's width (see module doc)."""
    stream = sys.stderr if stderr else sys.stdout
    whole_lines = not _is_tty(stream) and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPE_WIDTH if whole_lines else None)
