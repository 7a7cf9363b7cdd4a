"""``docs/config.md``: every config key, its type, default and meaning, generated from the pydantic models.

``vldistill config-reference > docs/config.md`` writes it; a test fails when the file is out of date.
The meaning of a key is its field's description (pydantic's ``Field(description=...)``, or the string
under the field: ``use_attribute_docstrings``); a section's introduction is its model's docstring
(up to its ``Raises:`` or ``Attributes:`` part). Whatever a model holds (nested sections, mappings and
lists of sections, unions, literals, constraints) is rendered without special cases per key, so new
keys appear when the file is regenerated; a key without a description is listed as undocumented
(:func:`undocumented` names them all).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

COMMAND = "vldistill config-reference > docs/config.md"
"""The command that regenerates ``docs/config.md``."""
UNDOCUMENTED = "(undocumented)"


def config_files() -> list[tuple[str, str, type[BaseModel]]]:
    """The config files a user writes: (title, the command that reads it, its top-level model)."""
    from vldistill.config import ExperimentConfig
    from vldistill.distill.pretrain_config import DidePretrainConfig
    from vldistill.protocol.runner import ProtocolConfig

    return [
        ("Experiment config", "vldistill train | plan | eval | cache build CONFIG", ExperimentConfig),
        ("Protocol file", "vldistill protocol PROTOCOL.yaml", ProtocolConfig),
        ("DiDE pre-training config", "vldistill pretrain CONFIG", DidePretrainConfig),
    ]


@dataclass(frozen=True)
class Section:
    """A model at a place in a config file: ``path`` is its dotted key (``method.teachers.<name>``)."""

    path: str
    model: type[BaseModel]


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _models_in(annotation: Any, path: str) -> Iterator[Section]:
    """The sections an annotation holds, at ``path``: a model, a mapping of models, a list of models."""
    annotation = _strip(annotation)
    if _is_model(annotation):
        yield Section(path, annotation)
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (dict, typing.Mapping) or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):
        yield from _models_in(args[-1], f"{path}.<name>")
    elif origin in (list, tuple, set, frozenset):
        for arg in args:
            if arg is not Ellipsis:
                yield from _models_in(arg, f"{path}[]")
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _models_in(arg, path)


def sections(model: type[BaseModel], path: str = "") -> list[Section]:
    """``model`` and every section under it, depth first, each model once per file (its first place)."""
    found: list[Section] = []
    seen: set[type[BaseModel]] = set()

    def visit(section: Section) -> None:
        if section.model in seen:
            return
        seen.add(section.model)
        found.append(section)
        for name, info in section.model.model_fields.items():
            for child in _models_in(info.annotation, f"{section.path}.{name}".lstrip(".")):
                visit(child)

    visit(Section(path, model))
    return found


def type_name(annotation: Any) -> str:
    """A reader's name of a field's type: ``int``, ``"a" | "b"``, ``list of string``, ``mapping of name to section``.

    >>> type_name(int | None), type_name(Literal["l1", "l2"]), type_name(dict[str, list[int]])
    ('int or null', '"l1" | "l2"', 'mapping of name to list of int')
    """
    annotation = _strip(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None) or annotation is None:
        return "null"
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in sorted(args, key=lambda a: a is type(None)))
    if origin is dict or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):
        return f"mapping of name to {type_name(args[-1])}" if args else "mapping"
    if origin in (list, set, frozenset):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if _is_model(annotation):
        return "section"
    names = {int: "int", float: "float", str: "string", bool: "bool", Any: "any"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


_BOUNDS = {
    annotated_types.Gt: ">",
    annotated_types.Ge: ">=",
    annotated_types.Lt: "<",
    annotated_types.Le: "<=",
    annotated_types.MinLen: "length >=",
    annotated_types.MaxLen: "length <=",
    annotated_types.MultipleOf: "multiple of",
}


def constraints(info: FieldInfo) -> str:
    """A field's bounds, e.g. ``>= 1``, ``> 0, <= 1`` (``annotated_types`` metadata, as pydantic keeps it)."""
    parts = []
    for item in info.metadata:
        symbol = next((s for kind, s in _BOUNDS.items() if isinstance(item, kind)), None)
        if symbol is not None:
            value = getattr(item, dataclasses.fields(item)[0].name)
            parts.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
    return ", ".join(parts)


def _plain(value: Any) -> Any:
    """``value`` as JSON data; a section as the keys it sets apart from its defaults."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return to_jsonable_python(value)


def default(info: FieldInfo) -> str:
    """A field's default: ``required``, ``its defaults`` (a section left as it is), or its value as JSON in backticks.

    A factory's value is shown (``train.log_with``: ``["tensorboard"]``); a section set otherwise shows
    the keys it sets (``{"kind": "dual"}``).
    """
    if info.is_required():
        return "required"
    try:
        value = info.get_default(call_default_factory=True, validated_data={})
    except TypeError:  # a factory of another signature
        value = info.get_default(call_default_factory=True)
    plain = _plain(value)
    if isinstance(value, BaseModel) and not plain:
        return "its defaults"
    return f"`{_cell(json.dumps(plain))}`"


def _cell(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", " ".join(text.split()))
    return text.replace("``", "`").replace("|", "\\|")


def introduction(model: type[BaseModel]) -> str:
    """A model's docstring up to its ``Raises:`` / ``Attributes:`` part, in markdown (pydantic's own excluded)."""
    doc = model.__doc__ if "__doc__" in vars(model) else None
    if not doc:
        return ""
    text = re.split(r"\n\s*(?:Raises|Attributes|Args):\s*\n", inspect.cleandoc(doc))[0]
    return "\n\n".join(_cell(p) for p in text.split("\n\n")).replace("\\|", "|")


def table(section: Section) -> list[str]:
    """The markdown table of a section's keys: key, type, default, meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, info in section.model.model_fields.items():
        key = f"{section.path}.{name}".lstrip(".")
        kind = type_name(info.annotation)
        bounds = constraints(info)
        kind = f"{kind} ({bounds})" if bounds else kind
        meaning = _cell(info.description or UNDOCUMENTED)
        rows.append(f"| `{key}` | {_cell(kind)} | {default(info)} | {meaning} |")
    return rows


def undocumented() -> list[str]:
    """Every key, in every config file, without a description."""
    return [
        f"{title}: {f'{s.path}.{name}'.lstrip('.')}"
        for title, _, model in config_files()
        for s in sections(model)
        for name, info in s.model.model_fields.items()
        if not info.description
    ]


def render() -> str:
    """The whole ``docs/config.md``."""
    lines = [
        "# Config reference",
        "",
        f"Generated from the pydantic models by `{COMMAND}`; do not edit by hand. Every key of the "
        "experiment, protocol and DiDE pre-training files, its type, default and meaning (the demo's own "
        "`demo_clip` and `demo_student` sections are described in configs/demo.yaml and "
        "`vldistill.demo.teachers` / `vldistill.demo.student`). An unknown key or a wrong type is an error "
        "naming the key; "
        "`--set key.path=value` overrides any key from the command line (values parsed as YAML).",
        "",
    ]
    documented: dict[type[BaseModel], str] = {}
    for title, command, model in config_files():
        lines += [f"## {title}", "", f"Read by `{command}`.", ""]
        for section in sections(model):
            heading = f"`{section.path}`" if section.path else "top level"
            lines += [f"### {title}: {heading}", ""]
            if section.model in documented:
                lines += [f"The keys of {documented[section.model]} (above).", ""]
                continue
            documented[section.model] = f"{title.lower()}: {heading}"
            intro = introduction(section.model)
            lines += ([intro, ""] if intro else []) + table(section) + [""]
    return "\n".join(lines).rstrip() + "\n"
