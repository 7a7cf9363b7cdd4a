"""The papers' evaluation protocol as a matrix: tasks x conditions x methods x seeds.

Each finished run appends its rows to ``DIR/results.jsonl`` (one per evaluated split and metric);
an interrupted protocol continues where it stopped: finished runs are skipped, an unfinished one
resumes from its last checkpoint. Conditions: ``full`` supervision; low-shot (a fraction of the
training set, or k examples per answer / label); the domain shift is evaluated on the runs of the
``full`` condition: trained on one style (or split) and tested on the other (``shift_root``), reported
as condition ``shift``.

A method entry can take its teacher from an earlier run of the same task (DiDE's fine-tuned fusion
teacher): ``pretrained: "run:<condition>/<label>/seed<k>"`` names that run's ``final/`` student.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from vldistill.config import ExperimentConfig, _format_validation, parse_config
from vldistill.errors import ConfigError, DataError

console = Console(stderr=True)
RUN_PREFIX = "run:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Condition(_Strict):
    """A training condition: full supervision, or a low-shot subset."""

    name: str
    fraction: float | None = Field(None, gt=0, le=1)
    per_group: int | None = Field(None, ge=1)
    # Low-shot runs see fewer examples per epoch; more epochs keep them from stopping after a handful
    # of steps (with 10% of the data and the full run's epochs, every method predicts the majority).
    epochs: int | None = Field(None, ge=1)


class MethodEntry(_Strict):
    """A column of the protocol: a method (config ``method:`` section) and optionally its own student."""

    method: dict[str, Any] = Field(default_factory=lambda: {"name": "none"})
    student: dict[str, Any] | None = None
    conditions: list[str] | None = None  # run only under these conditions (default: all)
    train: dict[str, Any] | None = None  # overrides of the base train section


class ProtocolConfig(_Strict):
    name: str = "protocol"
    base: dict[str, Any]
    tasks: list[Literal["vqa", "snli_ve", "vcr", "nlvr2"]]
    conditions: list[Condition] = Field(default_factory=lambda: [Condition(name="full")])
    shift: bool = True
    roots: dict[str, str] = Field(default_factory=dict)  # task -> dataset root (else base.data.root)
    shift_roots: dict[str, str] = Field(default_factory=dict)  # task -> domain-shifted root
    methods: dict[str, MethodEntry]
    seeds: list[int] = Field(default_factory=lambda: [0])

    @model_validator(mode="after")
    def _check(self) -> ProtocolConfig:
        names = [c.name for c in self.conditions]
        if "full" not in names:
            raise ValueError("conditions must include 'full' (the domain shift is evaluated on its runs)")
        if len(set(names)) != len(names):
            raise ValueError("condition names must be unique")
        return self


def load_protocol(path: Path) -> ProtocolConfig:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such protocol file; fix: check the path") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err}); fix: correct the syntax") from None
    try:
        return ProtocolConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, str(path))) from None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def run_dir(out: Path, task: str, condition: str, label: str, seed: int) -> Path:
    return out / "runs" / task / condition / label / f"seed{seed}"


def _resolve_run_refs(tree: Any, out: Path, task: str) -> Any:
    if isinstance(tree, dict):
        return {k: _resolve_run_refs(v, out, task) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_resolve_run_refs(v, out, task) for v in tree]
    if isinstance(tree, str) and tree.startswith(RUN_PREFIX):
        try:
            condition, label, seed = tree[len(RUN_PREFIX) :].split("/")
            path = run_dir(out, task, condition, label, int(seed.removeprefix("seed"))) / "final"
        except ValueError:
            raise ConfigError(
                f"teacher reference '{tree}'; fix: write run:<condition>/<method label>/seed<k>"
            ) from None
        if not path.is_dir():
            raise ConfigError(
                f"teacher reference '{tree}': {path} does not exist; fix: list the method it names "
                "earlier in 'methods' so that it runs first"
            )
        return str(path)
    return tree


def experiment(
    spec: ProtocolConfig, task: str, condition: Condition, label: str, seed: int, out: Path
) -> ExperimentConfig:
    """The experiment config of one cell of the matrix."""
    entry = spec.methods[label]
    tree = _merge(spec.base, {"name": f"{spec.name}/{task}/{condition.name}/{label}/seed{seed}"})
    data = tree.setdefault("data", {})
    data.update(task=task, fraction=condition.fraction, per_group=condition.per_group, subset_seed=seed)
    if task in spec.roots:
        data["root"] = spec.roots[task]
    if task in spec.shift_roots:
        data["shift_root"] = spec.shift_roots[task]
    if condition.name != "full" or not spec.shift:
        data["shift_root"] = None
    tree["method"] = _resolve_run_refs(entry.method, out, task)
    if entry.student:
        tree["student"] = _merge(tree.get("student", {}), entry.student)
    if entry.train:
        tree["train"] = _merge(tree.get("train", {}), entry.train)
    tree.setdefault("train", {})["seed"] = seed
    if condition.epochs is not None:
        tree["train"]["epochs"] = condition.epochs
    return parse_config(tree, f"protocol {spec.name} ({task}/{condition.name}/{label})")


def _key(row: dict[str, Any]) -> tuple:
    return row["task"], row["condition"], row["method"], row["student"], row["seed"]


def read_results(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(
                path, f"line {n}", f"malformed JSON ({err.msg})", "delete the line; its run will rerun"
            ) from None
    return rows


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rows_of(summary: dict[str, Any], task: str, condition: Condition, label: str, seed: int) -> list[dict[str, Any]]:
    rows = []
    for split, metrics in summary["eval"].items():
        cond = condition.name if split.split(":")[0] == "eval" else "shift"  # "eval:shuffled": the run's control
        for metric, value in metrics.items():
            if metric == "ms_per_example":
                continue
            rows.append(
                {
                    "task": task,
                    "condition": cond,
                    "method": summary["method"],
                    "label": label,
                    "student": summary["student"],
                    "seed": seed,
                    "metric": metric,
                    "value": value,
                    "split": split,
                    "train_examples": summary["train_examples"],
                    "seconds": summary["seconds"],
                    "fraction": condition.fraction,
                    "eval_ms_per_example": metrics.get("ms_per_example"),
                }
            )
    return rows


def run_protocol(spec: ProtocolConfig, out: Path, *, show_progress: bool = False) -> Path:
    """Run every cell not yet in ``out/results.jsonl``; returns that file."""
    from vldistill.train import train

    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(spec.model_dump_json(indent=1))
    results = out / "results.jsonl"
    done = {(r["task"], r["condition"], r.get("label", r["method"]), r["seed"]) for r in read_results(results)}
    cells = [
        (t, c, m, s)
        for t in spec.tasks
        for c in spec.conditions
        for m, e in spec.methods.items()
        if e.conditions is None or c.name in e.conditions
        for s in spec.seeds
    ]
    for i, (task, cond, label, seed) in enumerate(cells, 1):
        if (task, cond.name, label, seed) in done:
            continue
        cfg = experiment(spec, task, cond, label, seed, out)
        where = run_dir(out, task, cond.name, label, seed)
        console.print(f"[{i}/{len(cells)}] {task} {cond.name} {label} seed {seed}")
        # resume: an unfinished cell continues from its checkpoint (a cell without one starts afresh)
        summary = train(cfg, where, resume=True, show_progress=show_progress)
        _append(results, rows_of(summary, task, cond, label, seed))
    return results
