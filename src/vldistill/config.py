"""Experiment configs: one YAML file is one experiment, validated by pydantic.

An unknown key or a wrong type is a :class:`~vldistill.errors.ConfigError` that names the file, the
key and the fix. YAML is read with ``safe_load`` and configs only *name* registered components
(methods, teacher kinds, tasks): a config can never import or call arbitrary code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vldistill.data.config import DEFAULT_DEV_SPLITS, DEFAULT_SPLITS, DataConfig  # noqa: F401  (their home)
from vldistill.distill.config import MethodConfig
from vldistill.errors import ConfigError
from vldistill.models.students import StudentConfig
from vldistill.training.trackers import TrackerName

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"
def cache_dir() -> Path:
    """Where generated data, demo teachers and teacher caches live (``$VLDISTILL_CACHE``)."""
    return Path(os.environ.get("VLDISTILL_CACHE", Path.home() / ".cache" / "vldistill"))


class _Strict(BaseModel):
    # A string literal under a field is its description (pydantic's attribute docstrings): the meaning that
    # `vldistill config-reference` writes to docs/config.md.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class TrainConfig(_Strict):
    """Optimisation: AdamW with linear warmup and decay, on accelerate; model selection on the dev set.

    Without ``eval_every`` the final student is the last one (evaluated on dev at the end, if there is a
    dev set); with a dev set the evaluation splits are evaluated once, at the end, with the kept weights.

    Raises:
        ConfigError: ``early_stopping`` without ``eval_every``.
    """

    epochs: int = Field(3, ge=1)
    """Passes over the training set."""
    max_steps: int | None = Field(None, ge=1)
    """A step budget: exactly this many optimizer steps, over as many epochs as that takes (``epochs`` is
    then ignored), the schedule spanning them; for low-shot subsets, whose epochs are a handful of steps."""
    eval_every: int | None = Field(None, ge=1)
    """Evaluate on the dev set every this many steps and at the last; ``final/`` is the best on the primary metric."""
    early_stopping: int | None = Field(None, ge=1)
    """Stop after this many dev evaluations in a row without improvement (needs ``eval_every``)."""
    batch_size: int = Field(32, ge=1)
    """The global batch: examples per optimizer step (before ``grad_accum``), split across processes."""
    eval_batch_size: int = Field(64, ge=1)
    """Examples per batch when evaluating (and when building the teacher cache)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step: each step takes the update of a batch this many times larger."""
    lr: float = Field(1e-4, gt=0)
    """AdamW's peak learning rate."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW's weight decay (not on biases and norms)."""
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    """The fraction of the steps with a linear warmup; the learning rate then decays linearly to 0."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this (``null``: no clipping; the norm is logged either way)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """accelerate's mixed precision, on a GPU (a CPU run uses float32)."""
    seed: int = Field(0, ge=0, lt=2**32)  # torch / numpy seeds are 0 .. 2**32 - 1
    """The seed of initialisation, data order and dropout: a CPU run is deterministic for a seed."""
    checkpoint_every: int | None = Field(None, ge=1)
    """Also checkpoint every this many optimizer steps (a checkpoint is written at every epoch's end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest checkpoints to keep."""
    log_every: int = Field(10, ge=1)
    """Log the learning rate, loss terms and gradient norm every this many optimizer steps."""
    eval_each_epoch: bool = True
    """Without a dev set, also evaluate the evaluation splits after every epoch but the last (a learning
    curve in ``metrics.jsonl``; nothing is chosen from it)."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes that read and decode the images."""
    threads: int | None = Field(None, ge=1)
    """torch's CPU threads for this run (``null``: torch's default)."""
    log_with: list[TrackerName] = Field(default_factory=lambda: ["tensorboard"])
    """accelerate's experiment trackers, one name or a list (``[]``: none; ``all``: every one installed); each
    gets the step scalars and the resolved config as hyperparameters (``vldistill.training.trackers``)."""

    @field_validator("log_with", mode="before")
    @classmethod
    def _one_tracker_or_several(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _stopping_needs_evaluations(self) -> TrainConfig:
        if self.early_stopping is not None and self.eval_every is None:
            raise ConfigError(
                f"train.early_stopping ({self.early_stopping}) counts dev evaluations, but train.eval_every is "
                "not set, so there is only the one at the end; fix: set train.eval_every (optimizer steps)"
            )
        return self


class CacheConfig(_Strict):
    """Teacher-output cache: safetensors shards, memory-mapped, keyed by teacher and data fingerprints.

    ``fp16`` stores token features and attention maps in float16 (the real-size presets), ``int8`` in
    int8 with a scale per token (half of float16's bytes; wins over ``fp16``); embeddings, logits and
    candidate scores stay float32 (``vldistill.training.cache.shards``). ``shard_size``: rows per shard.
    """

    enabled: bool = False
    """Compute the teachers' targets once (``vldistill cache build``, or when training starts), not at each step."""
    dir: str | None = None
    """Where caches are kept (default: ``teachers/`` under the cache folder, ``$VLDISTILL_CACHE``)."""
    fp16: bool = False
    """Store token features and attention maps as float16 (half the size; part of the cache key)."""
    int8: bool = False
    """Store token features and attention maps as int8 with one absmax scale per token (a quarter of
    float32's bytes; wins over ``fp16``; part of the cache key)."""
    shard_size: int = Field(1024, ge=1)
    """Examples per safetensors shard."""


class ExperimentConfig(_Strict):
    """One experiment, one YAML file: ``vldistill train CONFIG`` (and ``plan``, ``cache build``, ``eval``)."""

    name: str = "experiment"
    """The run's name: its trackers' run name and its model card's title."""
    data: DataConfig
    """Which data to train and evaluate on."""
    student: StudentConfig = Field(default_factory=StudentConfig)
    """Which student to build."""
    method: MethodConfig = Field(default_factory=MethodConfig)
    """How to distil, and from which teachers."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation, evaluation, checkpoints and logging."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    """The teacher-output cache."""

    @model_validator(mode="after")
    def _prior_learns_alone(self) -> ExperimentConfig:
        """The text-only prior is a control: it learns from the task loss alone (vldistill.models.prior)."""
        if self.student.kind == "prior" and self.method.name != "none":
            raise ConfigError(
                f"student.kind prior (the text-only control) is trained with the task loss alone, but method.name "
                f"is '{self.method.name}'; fix: set method.name: none, or another student.kind"
            )
        return self

    @model_validator(mode="after")
    def _selection_needs_a_dev_set(self) -> ExperimentConfig:
        if self.train.eval_every is not None and not self.data.has_dev:
            raise ConfigError(
                f"train.eval_every ({self.train.eval_every}) selects the weights on a dev set, but this "
                f"{self.data.task} config has none; fix: set data.dev_split (a split of the dataset) or "
                "data.dev_holdout (training records held out, e.g. 0.1)"
            )
        return self


def _format_validation(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; fix: remove it or check its spelling (see configs/ for examples)"
    return f"{source}: {key}: {first['msg']}; fix: correct the value of '{key}'"


def _set_path(tree: dict[str, Any], dotted: str, value: Any, option: str | None = None) -> None:
    """Set ``tree[a][b]... = value`` for ``dotted`` ``"a.b..."``; errors name ``option`` (the ``--set``)."""
    option = option or f"--set {dotted}"
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{option}: '{p}' is not a section; fix: name a key inside a section")
    node[leaf] = value


def _protocol_hint(raw: dict[str, Any], source: str) -> str | None:
    """The one-line error for a protocol (or demo) file given where one experiment is expected, else None.

    A protocol file has ``base`` and ``methods`` / ``tasks`` instead of ``data`` (see vldistill.protocol.runner).
    """
    if "data" in raw or "base" not in raw or not {"methods", "tasks"} & raw.keys():
        return None
    if "demo_clip" in raw:
        return f"{source} is the demo's protocol file, not one experiment; fix: run `vldistill demo --out DIR`"
    return (
        f"{source} is a protocol file (tasks x conditions x methods x seeds), not one experiment; "
        f"fix: run it with `vldistill protocol {source} --out DIR`"
    )


def _overrides(items: list[str]) -> list[tuple[str, str, Any]]:
    """``key.path=value`` strings as ``(option, key, parsed value)``; ``option`` is ``--set key=value``."""
    parsed = []
    for item in items:
        option = f"--set {item}"
        if "=" not in item:
            raise ConfigError(f"{option}: no '='; fix: write key.path=value, e.g. --set train.epochs=1")
        key, value = item.split("=", 1)
        try:
            parsed.append((option, key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as err:
            raise ConfigError(
                f"{option}: value {value!r} is not valid YAML ({getattr(err, 'problem', err)}); "
                "fix: quote it or correct it"
            ) from None
    return parsed


def _blamed_override(err: ValidationError, overrides: list[tuple[str, str, Any]]) -> str | None:
    """The ``--set`` option that set the key the first validation error is about (the last one wins)."""
    loc = [str(p) for p in err.errors()[0]["loc"]]
    for option, key, _ in reversed(overrides):
        parts = key.split(".")
        if loc[: len(parts)] == parts or parts[: len(loc)] == loc:
            return option
    return None


def parse_config(raw: Any, source: str = "config", overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a config tree; ``overrides`` are ``key.path=value`` strings (values parsed as YAML).

    Errors name ``source``, or the ``--set`` option when the bad key is one an override set; a protocol
    file is told apart from an experiment config and pointed to ``vldistill protocol``.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections; fix: see configs/smoke.yaml")
    hint = _protocol_hint(raw, source)
    if hint is not None:
        raise ConfigError(hint)
    parsed = _overrides(overrides or [])
    for option, key, value in parsed:
        _set_path(raw, key, value, option)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, _blamed_override(err, parsed) or source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read and validate a YAML experiment config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; fix: check the path, or use --preset NAME") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; fix: save the config as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where}: invalid YAML ({getattr(err, 'problem', err)}); fix: correct the syntax"
        ) from None
    return parse_config(raw, str(path), overrides)


def preset_kind(path: Path) -> str:
    """What a YAML file of ``configs/`` is: ``"protocol"`` (top-level ``tasks`` and ``methods``: for
    ``vldistill protocol`` / ``vldistill demo --spec``), ``"pretrain"`` (``data.captions``: for
    ``vldistill pretrain``) or ``"experiment"`` (for ``train``, ``plan``, ``eval``, ``cache build``)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return "experiment"
    if isinstance(raw, dict) and "tasks" in raw and "methods" in raw:
        return "protocol"
    if isinstance(raw, dict) and isinstance(raw.get("data"), dict) and "captions" in raw["data"]:
        return "pretrain"
    return "experiment"


def preset_path(name: str, kinds: tuple[str, ...] = ("experiment",)) -> Path:
    """The YAML file of a named preset shipped in ``configs/``.

    Raises:
        ConfigError: no such preset; the message lists the presets of ``kinds`` (protocol files are
            not presets of ``train``: they are given to ``vldistill protocol`` as a file).
    """
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if preset_kind(p) in kinds)) or "none"
        raise ConfigError(f"unknown preset '{name}'; fix: use one of: {names}")
    return path
