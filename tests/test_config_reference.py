"""docs/config.md: generated from the pydantic models, complete, and up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vldistill.config_reference import COMMAND, Section, introduction, render, sections, table, undocumented

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_docs_config_md_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == render(), f"docs/config.md is out of date; regenerate it: {COMMAND}"


def test_every_key_says_what_it_means():
    missing = undocumented()
    assert not missing, (
        f"config keys without a description: {', '.join(missing)}; fix: write what each means in a string under "
        "its field (or Field(description=...)), then regenerate docs/config.md: " + COMMAND
    )


def test_the_command_prints_the_reference(monkeypatch, capsys):
    from reliability.corpus_files import run_cli

    result = run_cli(["config-reference"], monkeypatch, capsys)
    assert result.code == 0 and result.out == render()


class _Leaf(BaseModel):
    """A leaf section.

    Raises:
        ValueError: never (this part is left out of the reference).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    size: Annotated[int, Field(ge=1, lt=10)] = 3
    """How big."""


class _Root(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: Literal["a", "b"]
    """Which kind."""
    ratio: float | None = Field(None, gt=0, le=1)
    leaves: dict[str, _Leaf] = Field(default_factory=dict)
    """Named leaves."""
    items: list[_Leaf] = Field(default_factory=lambda: [_Leaf(size=4), _Leaf()])
    """Listed leaves."""
    maybe: _Leaf | None = None
    """A leaf or nothing."""
    pair: tuple[str, int] = ("x", 1)
    """Two things."""
    extra: dict[str, Any] = Field(default_factory=dict, description="Anything.")


def test_any_model_is_rendered_without_special_cases():
    """Nested sections (mapping, list, optional), literals, unions, tuples, bounds, factories, a missing meaning."""
    found = sections(_Root)
    assert found == [Section("", _Root), Section("leaves.<name>", _Leaf)]  # each model once, at its first place
    assert table(Section("", _Root))[2:] == [
        '| `kind` | "a" \\| "b" | required | Which kind. |',
        "| `ratio` | float or null (> 0, <= 1) | `null` | (undocumented) |",
        "| `leaves` | mapping of name to section | `{}` | Named leaves. |",
        '| `items` | list of section | `[{"size": 4}, {}]` | Listed leaves. |',
        "| `maybe` | section or null | `null` | A leaf or nothing. |",
        '| `pair` | [string, int] | `["x", 1]` | Two things. |',
        "| `extra` | mapping of name to any | `{}` | Anything. |",
    ]
    leaf = table(Section("leaves.<name>", _Leaf))[2:]
    assert leaf == ["| `leaves.<name>.size` | int (>= 1, < 10) | `3` | How big. |"]
    assert introduction(_Leaf) == "A leaf section." and introduction(_Root) == ""  # not pydantic's BaseModel doc
