"""``vldistill config-reference``: the config reference, docs/config.md, from the pydantic models."""

from __future__ import annotations

import sys


def config_reference_command() -> None:
    """Print the config reference (markdown): every key of every config file, its type, default and meaning.

    docs/config.md is this command's output: vldistill config-reference > docs/config.md
    """
    from vldistill.config_reference import render

    sys.stdout.write(render())
