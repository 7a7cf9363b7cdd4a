"""Experiment trackers of a run: accelerate's own, named by ``train.log_with``, with the config as hyperparameters.

accelerate's tracking API is used as its guide describes it (https://huggingface.co/docs/accelerate/
usage_guides/tracking): ``Accelerator(log_with=..., project_config=...)``, then
``init_trackers(project, config=hparams, init_kwargs=...)``, ``accelerator.log(values, step=...)`` and
``end_training()`` (:mod:`vldistill.training.run_folder` makes those calls). This module only checks the
names, builds the hyperparameters (flat: accelerate's TensorBoard tracker takes scalars and strings only)
and each tracker's keyword arguments.

Where each tracker writes (all of them offline unless their own settings say otherwise):

- ``tensorboard`` (the default): ``RUN/tensorboard/vldistill/``; the hyperparameters in a sub-folder
  there (TensorBoard's HPARAMS tab), each start of the run (a ``--resume`` included) adding one.
- ``wandb``: ``RUN/wandb/``, in offline mode unless ``WANDB_MODE`` is set (``wandb sync RUN/wandb/offline-run-*``
  uploads it later).
- ``mlflow``: the tracking store that mlflow's own settings name (``MLFLOW_TRACKING_URI``; without it
  mlflow 3 uses ``sqlite:///mlflow.db`` in the working directory), experiment ``vldistill``. A database
  store: mlflow's file store (``file:`` URIs, refused by mlflow >= 3.7 without ``MLFLOW_ALLOW_FILE_STORE``)
  keeps a metric per file and fails on ``dev/accuracy`` beside ``dev/accuracy/class/<label>``.
- the others (``comet_ml``, ``aim``, ``clearml``, ``dvclive``, ``swanlab``, ``trackio``): their defaults.

The project (TensorBoard's sub-folder, W&B's project, MLflow's experiment) is ``vldistill``; the run's
name is the config's ``name``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from vldistill.errors import ConfigError

PROJECT = "vldistill"
"""The project every run logs under: a TensorBoard sub-folder, a W&B project, an MLflow experiment."""
TENSORBOARD_DIR = "tensorboard"
"""The run folder's entry of accelerate's ``logging_dir`` (where TensorBoard writes)."""

HParam = str | int | float | bool | None
TrackerName = Literal[
    "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio", "all"
]
"""The experiment trackers of accelerate (``accelerate.utils.LoggerType``); ``all``: every one installed."""


def tracker_names(log_with: str | list[str]) -> list[str]:
    """``train.log_with`` as the list ``Accelerator(log_with=...)`` takes, each tracker's package checked.

    accelerate itself drops a requested tracker whose package is missing with a debug message only
    (``accelerate.tracking.filter_trackers``); a run that was asked to log somewhere must not train
    without logging there. ``"all"`` means accelerate's "every tracker installed" and needs none.

    Raises:
        ConfigError: a tracker whose package is not installed (the fix: ``pip install <package>``), or a
            name this accelerate does not know.
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    names = [log_with] if isinstance(log_with, str) else list(log_with)
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name == "all" or name in available:
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            import accelerate

            raise ConfigError(
                f"train.log_with: '{name}' is not a tracker of accelerate {accelerate.__version__}; fix: upgrade "
                f"accelerate, or use one of {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}"
            )
        raise ConfigError(
            f"train.log_with: '{name}' needs the {name} package, which is not installed; fix: pip install {name} "
            f"(or remove '{name}' from train.log_with)"
        )
    return names


def flat_hparams(tree: Mapping[str, Any], prefix: str = "") -> dict[str, HParam]:
    """A config tree as dotted keys -> scalars: what every accelerate tracker stores as hyperparameters.

    Sections become dotted keys; a list (e.g. ``data.ve_prompts``) becomes its JSON text; an empty
    section (``method.teachers: {}``) gives no key; ``None`` stays (TensorBoard leaves it out, MLflow
    writes ``None``).

    >>> flat_hparams({"train": {"lr": 0.001, "seed": 0}, "data": {"ve_prompts": ["a {}", "b {}"]}, "x": {}})
    {'train.lr': 0.001, 'train.seed': 0, 'data.ve_prompts': '["a {}", "b {}"]'}
    """
    out: dict[str, HParam] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{dotted}."))
        elif isinstance(value, list | tuple):
            out[dotted] = json.dumps(value)
        else:
            out[dotted] = value
    return out


def tracker_init_kwargs(out_dir: Path, run_name: str, resume_step: int | None) -> dict[str, dict[str, Any]]:
    """``init_trackers(init_kwargs=...)``: each tracker's options, by tracker name.

    ``resume_step``: the step a resumed run continues from (``None``: a new run). TensorBoard then hides
    the events of later steps that an interrupted attempt wrote (``SummaryWriter(purge_step=...)``).
    """
    tensorboard = {"purge_step": resume_step + 1} if resume_step is not None else {}
    return {
        "tensorboard": tensorboard,
        "wandb": {"dir": str(out_dir), "name": run_name, "mode": os.environ.get("WANDB_MODE", "offline")},
        "mlflow": {"run_name": run_name},
    }
