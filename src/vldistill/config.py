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

from vldistill.data.readers.layout import DataLayout
from vldistill.data.tasks import VE_PROMPTS, VQA_PROMPT
from vldistill.distill.config import MethodConfig
from vldistill.errors import ConfigError
from vldistill.models.students import StudentConfig
from vldistill.training.trackers import TrackerName

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_SPLITS = {
    "vqa": ("train2014", "val2014"),
    "snli_ve": ("train", "test"),
    "vcr": ("train", "val"),
    "nlvr2": ("train", "dev"),
}
# A task's default dev split (model selection only): SNLI-VE ships train / dev / test, so it selects on
# dev and reports test; VQA v2's test answers are hidden and VCR's, NLVR2's official evaluation split
# is the one the papers report, so those tasks have no dev split unless one is configured.
DEFAULT_DEV_SPLITS: dict[str, str | None] = {"vqa": None, "snli_ve": "dev", "vcr": None, "nlvr2": None}


def cache_dir() -> Path:
    """Where generated data, demo teachers and teacher caches live (``$VLDISTILL_CACHE``)."""
    return Path(os.environ.get("VLDISTILL_CACHE", Path.home() / ".cache" / "vldistill"))


class _Strict(BaseModel):
    # A string literal under a field is its description (pydantic's attribute docstrings): the meaning that
    # `vldistill config-reference` writes to docs/config.md.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class DataConfig(_Strict):
    """Which data to train and evaluate on: a dataset (in its publisher's layout, as ViLT's and DiDE's
    Arrow files, or as a Hugging Face ``datasets`` split), or the generated world.

    **Dev set (model selection only).** ``dev_split`` names a split of the dataset, ``dev_holdout``
    holds out this many training *records* (an int) or this fraction of them (a float in (0, 1)),
    grouped by image so that no picture is in both (:func:`vldistill.training.experiment.hold_out_dev`). The
    holdout is drawn with a fixed seed, independent of ``train.seed`` and ``subset_seed``, after
    ``max_train`` and before the low-shot subset, so every method and seed of a protocol selects on the
    same dev set and trains on subsets of the rest. The dev set only chooses the weights
    (``train.eval_every``); the evaluation splits are evaluated once, at the end, with those weights.
    When neither key is given, the task's default applies (SNLI-VE: ``dev``, its evaluation split
    being ``test``; other tasks: none); ``dev_split: null`` turns it off.

    Raises:
        ConfigError: ``dev_split`` and ``dev_holdout`` both set, ``dev_split`` equal to the training or
            evaluation split, or ``dev_holdout`` not a count >= 1 or a fraction in (0, 1).
    """

    task: Literal["vqa", "snli_ve", "vcr", "nlvr2"]
    """The task, and so the dataset format its files are read in: VQA v2, SNLI-VE, VCR or NLVR2."""
    root: str = "world"
    """The dataset root, laid out as its publisher distributes it, as ViLT's / DiDE's Arrow files, or as a
    Hugging Face ``datasets`` split (``save_to_disk`` folder or Parquet files); ``world`` (or ``world:base``,
    ``world:shifted``) is the generated world, created under the cache folder on first use."""
    format: Literal["auto", "official", "vilt_arrow", "hf_datasets"] = "auto"
    """The layout of ``root``: ``official``, ``vilt_arrow``, ``hf_datasets``; ``auto`` tells them apart by
    the files (docs/data-layouts.md)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """A ``datasets`` split's columns for the task's fields, e.g. ``{hypothesis: text}``
    (:mod:`vldistill.data.readers.hf_datasets`); unnamed fields are read from the publisher's own columns."""
    style: Literal["base", "shifted"] = "base"
    """The generated world's rendering style when ``root`` is ``world``."""
    world_scale: float = Field(1.0, gt=0)
    """Multiplies the generated world's number of images and records (0.1: a tenth)."""
    world_seed: int = Field(0, ge=0, lt=2**32)
    """Draws another generated world (0: the default one)."""
    train_split: str | None = None
    """The training split (default: the task's, e.g. ``train2014`` for VQA v2, ``train`` for the others)."""
    eval_split: str | None = None
    """The evaluation split (default: the task's, e.g. ``val2014`` for VQA v2, ``test`` for SNLI-VE)."""
    shift_root: str | None = None
    """A dataset root of another domain, evaluated as split ``shifted`` (``world:shifted``: the world's other style)."""
    fraction: float | None = Field(None, gt=0, le=1)
    """Low-shot: train on this fraction of the training records, drawn stratified by answer / label."""
    per_group: int | None = Field(None, ge=1)
    """Low-shot: train on this many records per answer / label."""
    subset_seed: int = Field(0, ge=0, lt=2**32)
    """The seed of the low-shot draw (the protocol sets it to the run's seed)."""
    manifest: str | None = None
    """A subset manifest (``subset.json`` of an earlier run): train on exactly its records."""
    max_train: int | None = Field(None, ge=1)
    """Keep the first this many training records (before the dev holdout and the low-shot subset)."""
    max_eval: int | None = Field(None, ge=1)
    """Keep the first this many records of each evaluation and dev split."""
    skip_bad: bool = False
    """Drop (and list) defective records and examples whose images are missing or unreadable; else stop at one."""
    min_answer_count: int = Field(1, ge=1)
    """VQA: answers seen fewer times in the training annotations are left out of the answer vocabulary
    (ViLT: 9 on VQA v2)."""
    # Write the prompts in the teacher's own words: a CLIP trained on captions that never say "perhaps"
    # cannot read "perhaps {}" as uncertainty (the demo's captions say "maybe").
    ve_prompts: tuple[str, str, str] = VE_PROMPTS
    """SNLI-VE: the texts a zero-shot teacher (CLIP) scores for its confidence weight (CLIP-TD's dynamic
    weight), for entailment, neutral and contradiction; ``{}`` is the hypothesis."""
    vqa_prompt: str = VQA_PROMPT
    """VQA: the candidate text a zero-shot teacher scores, with ``{question}`` and ``{answer}``."""
    dev_split: str | None = None
    """A split of the dataset to select the weights on (default: the task's, ``dev`` for SNLI-VE);
    ``null`` turns the default off."""
    dev_holdout: int | float | None = None
    """Hold out this many training records (an int) or this fraction of them (a float in (0, 1)) as the
    dev set, grouped by image."""

    @field_validator("ve_prompts")
    @classmethod
    def _ve_prompts_hold_the_hypothesis(cls, prompts: tuple[str, str, str]) -> tuple[str, str, str]:
        for prompt in prompts:
            if prompt.count("{}") != 1:
                raise ValueError(f"prompt {prompt!r} must hold the hypothesis once, as {{}}")
        return prompts

    @field_validator("vqa_prompt")
    @classmethod
    def _vqa_prompt_holds_the_answer(cls, prompt: str) -> str:
        try:
            text = prompt.format(question="Q", answer="A")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"prompt {prompt!r} may only use {{question}} and {{answer}} ({err})") from None
        if "A" not in text:
            raise ValueError(f"prompt {prompt!r} must contain {{answer}}")
        return prompt

    @model_validator(mode="after")
    def _columns_are_fields(self) -> DataConfig:
        from vldistill.data.readers.hf_datasets import check_columns

        self.layout()  # a ConfigError for columns with a format that has none
        if self.columns:
            check_columns(self.task, self.columns)
        return self

    def layout(self) -> DataLayout:
        """How the readers read ``root`` (and ``shift_root``): ``format`` and ``columns``."""
        return DataLayout(self.format, dict(self.columns))

    def splits(self) -> tuple[str, str]:
        train, evaluation = DEFAULT_SPLITS[self.task]
        return self.train_split or train, self.eval_split or evaluation

    @property
    def has_dev(self) -> bool:
        """Whether the config gives a dev set (a split or a holdout) to select on."""
        return self.dev_split is not None or self.dev_holdout is not None

    @model_validator(mode="after")
    def _dev_set(self) -> DataConfig:
        if self.dev_split is not None and self.dev_holdout is not None:
            raise ConfigError(
                f"data.dev_split ({self.dev_split!r}) and data.dev_holdout ({self.dev_holdout}) are both set, but "
                "a run selects on one dev set; fix: remove one of them"
            )
        holdout = self.dev_holdout
        if isinstance(holdout, int) and holdout < 1:
            raise ConfigError(
                f"data.dev_holdout: {holdout!r} is not a number of records; fix: give a count >= 1 or a fraction "
                "in (0, 1)"
            )
        if isinstance(holdout, float) and not 0 < holdout < 1:
            raise ConfigError(
                f"data.dev_holdout: {holdout} is not a fraction in (0, 1); fix: give a fraction such as 0.1, or a "
                "count of records such as 200"
            )
        if "dev_split" not in self.model_fields_set and holdout is None:
            self.dev_split = DEFAULT_DEV_SPLITS[self.task]
        train, evaluation = self.splits()
        if self.dev_split in (train, evaluation):
            role = "evaluation" if self.dev_split == evaluation else "training"
            raise ConfigError(
                f"data.dev_split {self.dev_split!r} is the {role} split, but the dev set must be held out from "
                "both (selecting on the evaluation split tunes on it); fix: name another split, use "
                "data.dev_holdout, or set data.dev_split: null"
            )
        return self


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
    """Teacher-output cache: safetensors shards, memory-mapped, keyed by teacher and data fingerprints."""

    enabled: bool = False
    """Compute the teachers' targets once (``vldistill cache build``, or when training starts), not at each step."""
    dir: str | None = None
    """Where caches are kept (default: ``teachers/`` under the cache folder, ``$VLDISTILL_CACHE``)."""
    fp16: bool = False
    """Store floating-point targets as float16 (half the size; part of the cache key)."""
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
