"""A run folder: what ``vldistill train`` and ``vldistill pretrain`` keep there, and when a folder may be reused.

A run folder holds ``config.yaml`` (the resolved config: every default filled in, ``--set``
overrides applied; ``vldistill eval RUN`` reads it), ``checkpoints/``, ``tensorboard/`` (``wandb/`` with that
tracker), ``metrics.jsonl``, ``subset.json``, ``final/`` and ``summary.json``.

``metrics.jsonl`` has three kinds of rows: one per ``log_every`` steps, ``{"kind": "step", "step",
"epoch", "lr", "loss", "grad_norm", "train_<term>"...}`` (``loss``: the total loss of the step's
window, the one whose gradient was applied; ``grad_norm``: before clipping); one per dev evaluation,
``{"kind": "dev", "step", "epoch", "dev": {metric: value}, "best": bool}`` (``best``: these weights are
the selected ones so far, see :mod:`vldistill.training.model_selection`); and one per epoch without ``kind``
(the trainer's own fields: ``epoch``, ``step``, the epoch's mean ``train_<term>``, ``eval``,
``seconds``). The trackers (``train.log_with``, TensorBoard by default: :mod:`vldistill.training.trackers`)
get ``train/lr``, ``train/loss``, ``train/grad_norm`` and ``train/<term>`` at the same steps, ``dev/<metric>``
at each dev evaluation, and the resolved config as hyperparameters.

Reuse rules:

- A new run into a folder that holds one is refused (it would mix two runs' TensorBoard events and
  metrics), unless ``overwrite``: then the old run's entries are removed first; other files stay.
- ``resume`` continues from the newest whole checkpoint. The saved ``config.yaml`` is compared with
  the new config: keys in ``harmless`` (logging, workers, evaluation batch size...) may change and
  are listed; any other change is refused with the keys named, since the checkpoint's optimizer
  state, schedule and data position belong to the old values. Rows and TensorBoard events logged
  after the checkpoint are dropped (they will be logged again). Without a checkpoint, ``resume``
  starts afresh (the protocol runner resumes every cell this way).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from pydantic import BaseModel
from torch import nn

from vldistill.errors import ConfigError
from vldistill.training import checkpoint as ckpt
from vldistill.training import sharding
from vldistill.training.engine import NumericsError
from vldistill.training.interrupt import Interrupted, StopSignals
from vldistill.training.trackers import PROJECT, TENSORBOARD_DIR, HParam, flat_hparams, tracker_init_kwargs

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RUN_ENTRIES = (
    CONFIG_FILE,
    "checkpoints",
    TENSORBOARD_DIR,
    "wandb",
    METRICS_FILE,
    "subset.json",
    "final",
    "summary.json",
)


@dataclass
class Position:
    """Where a run is: ``epoch`` epochs done, ``batch`` batches of the current epoch done, ``step`` optimizer steps."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config trees: key -> (old, new).

    >>> changed_keys({"train": {"lr": 1, "seed": 0}}, {"train": {"lr": 2, "seed": 0}})
    {'train.lr': (1, 2)}
    """
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.update(changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out


def _describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} ({json.dumps(a)} -> {json.dumps(b)})" for k, (a, b) in changes.items())


def _has_checkpoint(out_dir: Path) -> bool:
    return any(p.is_dir() for p in (out_dir / "checkpoints").glob(f"{ckpt.PREFIX}*"))


def holds_work(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds something a run made that the user may want: a checkpoint, ``final/``,
    ``summary.json`` or a logged step. A folder with only what a run writes before its first step
    (``config.yaml``, ``subset.json``, empty logs: a run refused while building its data or models)
    holds nothing to lose, so a corrected command may reuse it without ``--overwrite``."""
    if _has_checkpoint(out_dir) or (out_dir / "final").exists() or (out_dir / "summary.json").exists():
        return True
    return bool(read_rows(out_dir / METRICS_FILE)) if (out_dir / METRICS_FILE).is_file() else False


def check_reuse(
    out_dir: Path, tree: Mapping[str, Any], *, resume: bool, overwrite: bool, harmless: frozenset[str]
) -> dict[str, tuple[Any, Any]]:
    """Whether a run with config ``tree`` may use ``out_dir``; returns the allowed config changes (resume).

    Reads only, so that every process can check before any of them changes the folder.

    Raises:
        ConfigError: ``resume`` and ``overwrite`` together; a new run into a folder holding a run
            without ``overwrite``; a resume whose config changes a key outside ``harmless``.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out, --overwrite replaces it; fix: give one of them")
    if not resume:
        found = [name for name in RUN_ENTRIES if (out_dir / name).exists()]
        if found and not overwrite and holds_work(out_dir):
            raise ConfigError(
                f"{out_dir} already holds a run ({', '.join(found)}); fix: add --resume to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
        return {}
    saved = out_dir / CONFIG_FILE
    if not (_has_checkpoint(out_dir) and saved.is_file()):
        return {}
    try:
        before = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{saved}: not a readable YAML file ({err}); fix: restore it from the run's config") from None
    changes = changed_keys(before, tree)
    refused = {k: v for k, v in changes.items() if k not in harmless}
    if refused:
        raise ConfigError(
            f"--resume with a changed config: {_describe(refused)} would not continue the checkpointed run; "
            f"fix: restore the value(s) (the run's config is {saved}), or train into a new --out"
        )
    return changes


def prepare(out_dir: Path, tree: Mapping[str, Any], *, resume: bool, overwrite: bool) -> None:
    """Clear what must go (``overwrite``: the old run; a resume without checkpoint: stale logs); write config.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stale: tuple[str, ...] = ()
    if overwrite or (not resume and not holds_work(out_dir)):  # nothing there a run made: start clean
        stale = RUN_ENTRIES
    elif resume and not _has_checkpoint(out_dir):
        stale = (TENSORBOARD_DIR, METRICS_FILE)
    for name in stale:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    partial = out_dir / f".{CONFIG_FILE}.partial-{os.getpid()}"
    partial.write_text(yaml.safe_dump(dict(tree), sort_keys=False), encoding="utf-8")
    partial.replace(out_dir / CONFIG_FILE)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (an absent file has none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_rows(path: Path, pos: Position) -> None:
    """Drop the rows logged after the checkpoint at ``pos`` (a resumed run logs them again)."""
    rows = read_rows(path)
    keep = [r for r in rows if (r["step"] <= pos.step if "kind" in r else r["epoch"] <= pos.epoch)]
    if len(keep) != len(rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))


class RunFolder:
    """A run's folder on accelerate: its config, checkpoints, TensorBoard and ``metrics.jsonl``, its stop signals.

    Built on every process before data and models (so a refused folder costs nothing); as a context
    manager it records SIGINT / SIGTERM (:mod:`vldistill.training.interrupt`) and closes the trackers.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        out_dir: Path,
        config: BaseModel,
        *,
        resume: bool,
        overwrite: bool,
        harmless: frozenset[str],
        log_every: int,
        checkpoint_every: int | None,
        keep_checkpoints: int,
    ) -> None:
        self.accelerator, self.out_dir, self.resume = accelerator, Path(out_dir), resume
        self.log_every, self.checkpoint_every, self.keep = log_every, checkpoint_every, keep_checkpoints
        self.metrics = self.out_dir / METRICS_FILE
        self.checkpoints = self.out_dir / "checkpoints"
        self.signals = StopSignals()
        self.tree = tree = config.model_dump(mode="json")
        changes = check_reuse(self.out_dir, tree, resume=resume, overwrite=overwrite, harmless=harmless)
        self._held_run = any((self.out_dir / name).exists() for name in RUN_ENTRIES)
        accelerator.wait_for_everyone()  # every process has checked before the folder changes
        if accelerator.is_main_process:
            if changes:
                print(f"config changed since the checkpoint (allowed): {_describe(changes)}")
            prepare(self.out_dir, tree, resume=resume, overwrite=overwrite)
        accelerator.wait_for_everyone()
        self._state: tuple[dict[str, nn.Module], Any, Any] | None = None
        self._saved_at = -1

    def __enter__(self) -> RunFolder:
        self.signals.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.signals.__exit__(kind, value, tb)
        self.accelerator.end_training()

    def restore(
        self,
        modules: dict[str, nn.Module],
        optimizer: Any,
        scheduler: Any,
        extra_hparams: Mapping[str, HParam] | None = None,
    ) -> Position:
        """Load the newest whole checkpoint (when resuming) and start the trackers; returns the position.

        ``modules["model"]`` is the prepared model (the optimizer's parameters); under FSDP the whole
        tensors of the checkpoint are sharded as they load (:mod:`vldistill.training.sharding`).
        The trackers (``train.log_with``) get the run's resolved config, flattened to dotted keys
        (:func:`~vldistill.training.trackers.flat_hparams`), and ``extra_hparams`` as hyperparameters.
        """
        self._state = (modules, optimizer, scheduler)
        pos = Position()
        loaded = ckpt.load_latest(self.checkpoints, modules) if self.resume else None
        for message in loaded.skipped if loaded else []:
            self.accelerator.print(f"warning: skipped checkpoint {message}; using the previous good one")
        if loaded is not None and loaded.step >= 0:
            for name, module in modules.items():
                sharding.load_full_state_dict(module, loaded.weights[name])
            sharding.load_optimizer_state_dict(modules["model"], optimizer, loaded.state["optimizer"])
            scheduler.load_state_dict(loaded.state["scheduler"])
            ckpt.set_rng_state(loaded.state["rng"])
            pos = Position(**{k: loaded.state["position"][k] for k in ("epoch", "batch", "step")})
            self._saved_at = pos.step
            self.accelerator.print(f"resumed from {loaded.path.name} (epoch {pos.epoch}, step {pos.step})")
        elif self.resume and self._held_run:
            self.accelerator.print(f"no checkpoint in {self.checkpoints}; starting from the beginning")
        if self.accelerator.is_main_process:
            trim_rows(self.metrics, pos)
        # The trackers get the resolved config (and ``extra_hparams``) as hyperparameters; TensorBoard hides
        # the events of steps after the checkpoint that an earlier attempt wrote.
        hparams = {**flat_hparams(self.tree), **(extra_hparams or {})}
        init_kwargs = tracker_init_kwargs(self.out_dir, str(self.tree.get("name")), pos.step if self.resume else None)
        self.accelerator.init_trackers(PROJECT, config=hparams, init_kwargs=init_kwargs)
        return pos

    def save(self, pos: Position) -> None:
        """A checkpoint of the modules, optimizer, scheduler, RNG states and ``pos`` (the main process writes)."""
        assert self._state is not None, "restore() first"
        modules, optimizer, scheduler = self._state
        # Every process takes part: under FSDP, gathering the whole weights and optimizer state is a collective.
        weights = {name: sharding.full_state_dict(self.accelerator, m) for name, m in modules.items()}
        optimizer_state = sharding.optimizer_state_dict(self.accelerator, modules["model"], optimizer)
        if self.accelerator.is_main_process:
            state = {
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "rng": ckpt.rng_state(),
                "position": {"epoch": pos.epoch, "batch": pos.batch, "step": pos.step},
            }
            ckpt.save_checkpoint(self.checkpoints, pos.step, weights, state, keep=self.keep)
        self._saved_at = pos.step
        self.accelerator.wait_for_everyone()

    def after_step(
        self, pos: Position, *, lr: float, loss: float, grad_norm: torch.Tensor | None, terms: Mapping[str, float]
    ) -> None:
        """Log every ``log_every`` steps, checkpoint every ``checkpoint_every``, stop if a signal came."""
        if pos.step % self.log_every == 0:
            scalars = {"lr": lr, "loss": loss, **({} if grad_norm is None else {"grad_norm": float(grad_norm)})}
            scalars.update({f"train_{k}": v for k, v in terms.items()})
            self.accelerator.log({f"train/{k.removeprefix('train_')}": v for k, v in scalars.items()}, step=pos.step)
            self._append({"kind": "step", "step": pos.step, "epoch": pos.epoch + 1, **scalars})
        if self.checkpoint_every and pos.step % self.checkpoint_every == 0:
            self.save(pos)
        self.stop_if_asked(pos)

    def end_epoch(self, pos: Position, row: dict[str, Any], scalars: Mapping[str, float]) -> None:
        """The epoch's row in ``metrics.jsonl``, its ``scalars`` in TensorBoard, a checkpoint; stop if a signal came."""
        self.accelerator.log(dict(scalars), step=pos.step)
        self._append(row)
        self.save(pos)
        self.stop_if_asked(pos)

    @property
    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint this run wrote or resumed from; ``None`` before the first one."""
        return None if self._saved_at < 0 else ckpt.checkpoint_dir(self.checkpoints, self._saved_at)

    def non_finite(self, pos: Position, err: Exception) -> NumericsError:
        """The error that stops the run when the loss of the step after ``pos`` is not finite (``err`` names the terms).

        It says what is true of this run: the checkpoint that stays intact, or that none was written;
        the fix is a new run (``--overwrite``), since a ``--resume`` may not change ``train.lr`` or a weight.
        """
        step = pos.step + 1
        saved = self.last_checkpoint
        kept = (
            f"no checkpoint was written (none before step {step})"
            if saved is None
            else f"the last good checkpoint, {saved}, is intact"
        )
        return NumericsError(
            f"step {step}: {err}; {kept}; fix: lower train.lr or the term's weight, then rerun with --overwrite "
            "(--resume may not change them)"
        )

    def log_row(self, step: int, row: Mapping[str, Any], scalars: Mapping[str, float]) -> None:
        """A row with a ``kind`` (and a ``step``) in ``metrics.jsonl``, its ``scalars`` in TensorBoard at ``step``."""
        self.accelerator.log(dict(scalars), step=step)
        self._append(row)

    def stop_if_asked(self, pos: Position) -> None:
        """Raises ``Interrupted`` (after a checkpoint at ``pos``) if SIGINT or SIGTERM came."""
        signum = self.signals.requested(self.accelerator)
        if signum:
            if self._saved_at != pos.step:
                self.save(pos)
            raise Interrupted(signum, step=pos.step)

    def rows(self, kind: str) -> list[dict[str, Any]]:
        """The rows of ``kind`` in ``metrics.jsonl``, those of earlier attempts of a resumed run included."""
        return [r for r in read_rows(self.metrics) if r.get("kind") == kind]

    def epoch_rows(self) -> list[dict[str, Any]]:
        """The epoch rows of ``metrics.jsonl``, those of earlier attempts of a resumed run included."""
        return [r for r in read_rows(self.metrics) if r.get("kind") != "step"]

    def _append(self, row: Mapping[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with self.metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")
