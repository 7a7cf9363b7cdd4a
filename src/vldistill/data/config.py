"""The ``data:`` section of an experiment config (:class:`DataConfig`) and the tasks' default splits.

Part of :class:`vldistill.config.ExperimentConfig` (validated by pydantic; an unknown key or a wrong
type is a :class:`~vldistill.errors.ConfigError` naming the file and the key); kept here, beside the
readers it configures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vldistill.data.readers.layout import DataLayout
from vldistill.data.tasks import VE_PROMPTS, VQA_PROMPT
from vldistill.errors import ConfigError

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
    def _one_low_shot_rule(self) -> DataConfig:
        if self.fraction is not None and self.per_group is not None:
            raise ConfigError(
                f"data.fraction ({self.fraction}) and data.per_group ({self.per_group}) are both set, but a "
                "low-shot subset is drawn by one of them; fix: remove one"
            )
        return self

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
