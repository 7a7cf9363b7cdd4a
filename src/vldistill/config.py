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

from vldistill.data.tasks import VE_PROMPTS, VQA_PROMPT
from vldistill.distill.config import MethodConfig
from vldistill.errors import ConfigError
from vldistill.models.students import StudentConfig

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
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Which data to train and evaluate on.

    ``root: world`` uses the generated world (rendered in ``style``), created on first use under the
    cache folder; any other value is a dataset root laid out as its publisher distributes it.
    ``shift_root`` adds a domain-shifted evaluation (``world:shifted`` for the world's other style).
    ``world_scale`` multiplies the world's sizes and ``world_seed`` draws another world (0: the default).

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
    root: str = "world"
    style: Literal["base", "shifted"] = "base"
    world_scale: float = Field(1.0, gt=0)
    world_seed: int = Field(0, ge=0, lt=2**32)
    train_split: str | None = None
    eval_split: str | None = None
    shift_root: str | None = None
    fraction: float | None = Field(None, gt=0, le=1)
    per_group: int | None = Field(None, ge=1)
    subset_seed: int = Field(0, ge=0, lt=2**32)
    manifest: str | None = None
    max_train: int | None = Field(None, ge=1)
    max_eval: int | None = Field(None, ge=1)
    skip_bad: bool = False
    min_answer_count: int = Field(1, ge=1)  # VQA answers seen fewer times are left out (ViLT: 9 on VQA v2)
    # The texts a zero-shot teacher (CLIP) scores for its confidence weight (CLIP-TD's dynamic weight):
    # SNLI-VE's three label prompts ({} is the hypothesis; entailment, neutral, contradiction) and VQA's
    # candidate template. Write them in the teacher's own words: a CLIP trained on captions that never
    # say "perhaps" cannot read "perhaps {}" as uncertainty (the demo's captions say "maybe").
    ve_prompts: tuple[str, str, str] = VE_PROMPTS
    vqa_prompt: str = VQA_PROMPT
    dev_split: str | None = None
    dev_holdout: int | float | None = None

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

    ``max_steps``: a step budget: train for exactly this many optimizer steps, over as many epochs as
    that takes (``epochs`` is then ignored), with the schedule spanning those steps; for low-shot
    subsets, whose epochs are a handful of steps.

    ``eval_every``: evaluate on the dev set every this many optimizer steps and at the last step; the
    run's ``final/`` student is the best of these evaluations on the task's primary metric (the first
    best on a tie). ``early_stopping``: stop after this many dev evaluations in a row without
    improvement. Without ``eval_every`` the final student is the last one (evaluated on dev at the end,
    if there is a dev set). ``eval_each_epoch``: without a dev set, also evaluate the evaluation splits
    after every epoch but the last (a learning curve in ``metrics.jsonl``; nothing is chosen from it);
    with a dev set the evaluation splits are evaluated once, at the end.

    Raises:
        ConfigError: ``early_stopping`` without ``eval_every``.
    """

    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1)
    eval_every: int | None = Field(None, ge=1)
    early_stopping: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = Field(0, ge=0, lt=2**32)  # torch / numpy seeds are 0 .. 2**32 - 1
    checkpoint_every: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    eval_each_epoch: bool = True  # without a dev set: a learning curve on the evaluation splits
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)

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
    dir: str | None = None
    fp16: bool = False
    int8: bool = False
    shard_size: int = Field(1024, ge=1)


class ExperimentConfig(_Strict):
    name: str = "experiment"
    data: DataConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

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


def preset_path(name: str) -> Path:
    """The YAML file of a named preset shipped in ``configs/``."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))) or "none"
        raise ConfigError(f"unknown preset '{name}'; fix: use one of: {names}")
    return path
