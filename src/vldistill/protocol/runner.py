"""The papers' evaluation protocol as a matrix: tasks x conditions x methods x seeds.

Each finished run appends its rows to ``DIR/results.jsonl`` (one per evaluated split and metric);
an interrupted protocol continues where it stopped: finished runs are skipped, an unfinished one
resumes from its last checkpoint. Conditions: ``full`` supervision; low-shot (a fraction of the
training set, or k examples per answer / label); the domain shift is evaluated on the runs of the
``full`` condition: trained on one style (or split) and tested on the other (``shift_root``), reported
as condition ``shift``.

A method entry can take its teacher from another run of the same task (DiDE's fine-tuned fusion
teacher): ``pretrained: "run:<condition>/<label>/seed<k>"`` names that run's ``final/`` student, and
the cell waits for that run. With ``jobs`` > 1 (``vldistill protocol --jobs N``) up to N runs train at
once, each in its own process (:mod:`vldistill.protocol.jobs`); the rows are the same as with one.

A method entry whose student is ``kind: prior`` is the text-only control (``vldistill.models.prior``):
its rows have method ``prior``. With the image-shuffle control the run summary also holds splits
``eval:shuffled`` / ``shifted:shuffled`` (every example scored with another example's image): their rows
carry ``control: "shuffled"`` and the condition of the split they shuffle.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vldistill.config import ExperimentConfig, _format_validation, parse_config
from vldistill.console import make_console
from vldistill.errors import ConfigError, DataError

console = make_console(stderr=True)
RUN_PREFIX = "run:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Condition(_Strict):
    """A training condition: full supervision, or a low-shot subset."""

    name: str
    """The condition's name in the report (``full`` is required: the domain shift is evaluated on its runs)."""
    fraction: float | None = Field(None, gt=0, le=1)
    """Low-shot: this fraction of the training records (``data.fraction``)."""
    per_group: int | None = Field(None, ge=1)
    """Low-shot: this many records per answer / label (``data.per_group``)."""
    # With 10% of the data and the full run's epochs, every method predicted the majority.
    epochs: int | None = Field(None, ge=1)
    """``train.epochs`` under this condition: low-shot runs see fewer examples per epoch, more epochs keep
    them from stopping after a handful of steps."""
    train: dict[str, Any] | None = None
    """Overrides of the ``train`` section under this condition (e.g. ``max_steps``)."""


class MethodEntry(_Strict):
    """A column of the protocol: a method (config ``method:`` section) and optionally its own student."""

    method: dict[str, Any] = Field(default_factory=lambda: {"name": "none"})
    """The experiment's ``method`` section; a teacher's ``pretrained: "run:<condition>/<label>/seed<k>"``
    names the ``final/`` student of another run of the same task (``{seed}``: the cell's own seed)."""
    student: dict[str, Any] | None = None
    """Overrides of the base ``student`` section (``{kind: prior}``: the text-only control)."""
    conditions: list[str] | None = None
    """Run only under these conditions (default: all)."""
    train: dict[str, Any] | None = None
    """Overrides of the base ``train`` section."""


class ProtocolConfig(_Strict):
    """The protocol: ``vldistill protocol PROTOCOL.yaml`` trains tasks x conditions x methods x seeds."""

    name: str = "protocol"
    """The protocol's name (each run is named ``<name>/<task>/<condition>/<label>/seed<k>``)."""
    base: dict[str, Any]
    """The experiment config every run starts from (``data.task`` and the subset keys are set per cell)."""
    tasks: list[Literal["vqa", "snli_ve", "vcr", "nlvr2"]]
    """The tasks (rows of the report)."""
    conditions: list[Condition] = Field(default_factory=lambda: [Condition(name="full")])
    """The training conditions."""
    shift: bool = True
    """Evaluate the ``full`` runs on the domain-shifted root too (reported as condition ``shift``)."""
    roots: dict[str, str] = Field(default_factory=dict)
    """Task -> dataset root (else ``base.data.root``)."""
    per_task: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Task -> overrides of the base config for that task (e.g. ``{vqa: {data: {dev_holdout: 750}}}``: VQA
    v2 has no dev split, SNLI-VE has one)."""
    shift_roots: dict[str, str] = Field(default_factory=dict)
    """Task -> domain-shifted dataset root."""
    methods: dict[str, MethodEntry]
    """Label -> method entry (columns of the report)."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Training seeds; each is also the low-shot subset's seed."""
    jobs: int = Field(1, ge=1)
    """Runs trained at once, each in its own process (``vldistill protocol --jobs``)."""

    @model_validator(mode="after")
    def _check(self) -> ProtocolConfig:
        names = [c.name for c in self.conditions]
        if len(set(self.seeds)) != len(self.seeds) or any(not 0 <= s < 2**32 for s in self.seeds):
            raise ValueError(f"seeds {self.seeds}: each once, each in 0 .. 2**32 - 1 (torch's seed range)")
        if "full" not in names:
            raise ValueError("conditions must include 'full' (the domain shift is evaluated on its runs)")
        if len(set(names)) != len(names):
            raise ValueError("condition names must be unique")
        unknown = sorted(set(self.per_task) - set(self.tasks))
        if unknown:
            raise ValueError(f"per_task names {', '.join(unknown)}, not in tasks; fix: use one of {self.tasks}")
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


RunKey = tuple[str, str, str, int]
"""A run of the matrix: (task, condition name, method label, seed)."""


def run_reference(ref: str, task: str, seed: int | None = None) -> RunKey:
    """The run that ``"run:<condition>/<label>/seed<k>"`` names (a run of the same ``task``).

    ``seed{seed}`` names the run of the cell's own ``seed`` (DiDE: each seed's dual encoder learns
    from the fusion teacher of the same seed).

    Raises:
        ConfigError: not of that form.
    """
    if seed is not None:
        ref = ref.replace("{seed}", str(seed))
    try:
        condition, label, seed = ref[len(RUN_PREFIX) :].split("/")
        return task, condition, label, int(seed.removeprefix("seed"))
    except ValueError:
        raise ConfigError(f"teacher reference '{ref}'; fix: write run:<condition>/<method label>/seed<k>") from None


def run_references(tree: Any) -> list[str]:
    """Every ``run:`` string in a config tree, in order."""
    if isinstance(tree, dict):
        return [ref for value in tree.values() for ref in run_references(value)]
    if isinstance(tree, list):
        return [ref for value in tree for ref in run_references(value)]
    return [tree] if isinstance(tree, str) and tree.startswith(RUN_PREFIX) else []


def _resolve_run_refs(tree: Any, out: Path, task: str, seed: int) -> Any:
    if isinstance(tree, dict):
        return {k: _resolve_run_refs(v, out, task, seed) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_resolve_run_refs(v, out, task, seed) for v in tree]
    if isinstance(tree, str) and tree.startswith(RUN_PREFIX):
        path = run_dir(out, *run_reference(tree, task, seed)) / "final"
        if not path.is_dir():
            raise ConfigError(
                f"teacher reference '{tree}': {path} does not exist; fix: list the method it names in 'methods' "
                "(under that condition and seed) so that it runs first"
            )
        return str(path)
    return tree


def experiment(
    spec: ProtocolConfig,
    task: str,
    condition: Condition,
    label: str,
    seed: int,
    out: Path,
    *,
    resolve_refs: bool = True,
) -> ExperimentConfig:
    """The experiment config of one cell of the matrix.

    With ``resolve_refs`` a ``run:`` teacher reference becomes that run's ``final/`` folder, which must
    exist; without, it is left as written (every cell's config is checked before any run starts).
    """
    entry = spec.methods[label]
    tree = _merge(spec.base, spec.per_task.get(task, {}))
    tree = _merge(tree, {"name": f"{spec.name}/{task}/{condition.name}/{label}/seed{seed}"})
    data = tree.setdefault("data", {})
    data.update(task=task, fraction=condition.fraction, per_group=condition.per_group, subset_seed=seed)
    if task in spec.roots:
        data["root"] = spec.roots[task]
    if task in spec.shift_roots:
        data["shift_root"] = spec.shift_roots[task]
    if condition.name != "full" or not spec.shift:
        data["shift_root"] = None
    for ref in run_references(entry.method):
        run_reference(ref, task, seed)
    tree["method"] = _resolve_run_refs(entry.method, out, task, seed) if resolve_refs else copy.deepcopy(entry.method)
    if entry.student:
        tree["student"] = _merge(tree.get("student", {}), entry.student)
    if entry.train:
        tree["train"] = _merge(tree.get("train", {}), entry.train)
    tree.setdefault("train", {})["seed"] = seed
    if condition.epochs is not None:
        tree["train"]["epochs"] = condition.epochs
    if condition.train:
        tree["train"] = _merge(tree["train"], condition.train)
    return parse_config(tree, f"protocol {spec.name} ({task}/{condition.name}/{label})")


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


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to ``results.jsonl`` as JSON lines, flushed to disk (one writer: the protocol's process)."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


SHUFFLED = "shuffled"


def rows_of(summary: dict[str, Any], task: str, condition: Condition, label: str, seed: int) -> list[dict[str, Any]]:
    """The ``results.jsonl`` rows of one finished run: one per evaluated split and metric.

    ``summary`` is the run's ``summary.json``: ``eval`` maps each split (``eval``, ``shifted``, and the
    image-shuffle controls ``eval:shuffled``, ``shifted:shuffled``) to its metrics (the primary metric,
    its breakdowns ``<primary>/<group>/<value>``, ``ms_per_example``); ``dev`` maps metrics to their
    values on the dev split and ``best_step`` is the step of the checkpoint selected on it (both absent
    from summaries written before dev selection). A row's ``condition`` is the run's for ``eval``
    splits and ``shift`` for ``shifted`` ones; ``control`` is ``"shuffled"`` for a shuffled split, else
    None; ``dev`` is the dev value of the primary metric; ``method`` is ``prior`` for a text-only prior.
    """
    primary = summary.get("primary_metric")
    dev = (summary.get("dev") or {}).get(primary)
    method = "prior" if summary["student"] == "prior" else summary["method"]
    rows = []
    for split, metrics in summary["eval"].items():
        evaluated, _, control = split.partition(":")
        cond = condition.name if evaluated == "eval" else "shift"
        for metric, value in metrics.items():
            if metric in ("ms_per_example", "deploy_ms_per_example"):
                continue
            rows.append(
                {
                    "task": task,
                    "condition": cond,
                    "method": method,
                    "label": label,
                    "student": summary["student"],
                    "seed": seed,
                    "metric": metric,
                    "value": value,
                    "split": split,
                    "control": control or None,
                    "train_examples": summary["train_examples"],
                    "seconds": summary["seconds"],
                    "fraction": condition.fraction,
                    "eval_ms_per_example": metrics.get("ms_per_example"),
                    "eval_deploy_ms_per_example": metrics.get("deploy_ms_per_example"),
                    "dev": dev,
                    "best_step": summary.get("best_step"),
                }
            )
    return rows


def run_protocol(spec: ProtocolConfig, out: Path, *, show_progress: bool = False, jobs: int | None = None) -> Path:
    """Run every cell not yet in ``out/results.jsonl``; returns that file.

    ``jobs`` (default ``spec.jobs``): how many runs train at once, each in its own process; 1 trains
    them one after the other in this process. Every cell's config is checked before the first run. With
    ``jobs`` > 1 a script that calls this must guard its entry point (``if __name__ == "__main__":``),
    as every use of ``multiprocessing``'s spawn must (:mod:`vldistill.protocol.jobs`).

    Raises:
        ConfigError: a bad cell config, or a teacher reference to a run that neither is in the matrix
            nor exists (before any run); a run's own error (the protocol stops, runs in flight finish).
    """
    from vldistill.protocol.jobs import Matrix, run_cells

    out.mkdir(parents=True, exist_ok=True)
    # the settings as run: the jobs actually used, not the file's default
    (out / "protocol.json").write_text(spec.model_copy(update={"jobs": jobs or spec.jobs}).model_dump_json(indent=1))
    results = out / "results.jsonl"
    done = {(r["task"], r["condition"], r.get("label", r["method"]), r["seed"]) for r in read_results(results)}
    matrix = Matrix.of(spec, out, done)
    run_cells(matrix, spec, out, jobs=jobs or spec.jobs, show_progress=show_progress)
    return results
