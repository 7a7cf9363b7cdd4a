"""Atomic, verifiable, resumable checkpoints.

A checkpoint is a folder ``checkpoints/step-<N>/`` holding ``weights.safetensors`` (student and
projections), ``state.pt`` (optimizer, scheduler, RNG states, data position; tensors and plain
containers only, read back with ``torch.load(weights_only=True)``) and ``COMPLETE.json`` with the
sha256 of each file. Tensors are whole even when the run shards them with FSDP (gathered by
:mod:`vldistill.training.sharding`). It is written under a temporary name and renamed into place, so a run killed at
any moment leaves either a whole checkpoint or none; a partial or corrupt one is detected by its
hashes, skipped with a message, and the previous good one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _weights(states: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    # Clone so that tied parameters (shared storage) are written as independent tensors.
    return {f"{name}.{k}": v.detach().cpu().contiguous().clone() for name, sd in states.items() for k, v in sd.items()}


def _remove(path: Path) -> None:
    """Delete a checkpoint folder atomically: renamed out of ``step-*`` first, then deleted."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def checkpoint_dir(root: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives under ``root``: ``root/step-<step, 8 digits>``."""
    return root / f"{PREFIX}{step:08d}"


def save_checkpoint(
    root: Path,
    step: int,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    state: dict[str, Any],
    keep: int = 2,
    before_publish: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``root/step-<step>`` atomically and keep the newest ``keep`` checkpoints.

    ``weights`` maps a module's name to its state dict (whole tensors); they are written as
    ``<name>.<key>``. ``before_publish`` (tests) is called with the temporary folder just before the rename.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_weights(weights), str(tmp / "weights.safetensors"))
    torch.save(state, tmp / "state.pt")
    files = {name: _sha256(tmp / name) for name in ("weights.safetensors", "state.pt")}
    (tmp / "COMPLETE.json").write_text(json.dumps({"step": step, "sha256": files}, indent=1))
    for name in (*files, "COMPLETE.json"):
        with (tmp / name).open("rb") as f:
            os.fsync(f.fileno())
    if before_publish is not None:
        before_publish(tmp)
    if final.exists():
        _remove(final)
    tmp.rename(final)
    _fsync_dir(root)
    for old in sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
        _remove(old)
    return final


def verify(path: Path) -> str | None:
    """``None`` if the checkpoint at ``path`` is whole, else what is wrong with it."""
    marker = path / "COMPLETE.json"
    if not marker.is_file():
        return "no COMPLETE.json (the write was interrupted)"
    try:
        expected = json.loads(marker.read_text())["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return "COMPLETE.json is unreadable"
    for name, digest in expected.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} does not match its recorded sha256 (corrupt)"
    return None


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    state: dict[str, Any]
    skipped: list[str]
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module name -> its state dict


def load_latest(root: Path, names: Iterable[str]) -> LoadedCheckpoint | None:
    """Read the newest whole checkpoint under ``root``: the state dicts of the modules ``names``; ``None`` if none.

    Corrupt or partial checkpoints are skipped; ``skipped`` says which and why.
    """
    skipped: list[str] = []
    for path in sorted((p for p in root.glob(f"{PREFIX}*") if p.is_dir()), reverse=True):
        problem = verify(path)
        if problem:
            skipped.append(f"{path.name}: {problem}")
            continue
        try:
            state = torch.load(path / "state.pt", weights_only=True)
        except (UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            skipped.append(f"{path.name}: state.pt cannot be loaded safely ({str(err).splitlines()[0][:120]})")
            continue
        weights = load_file(str(path / "weights.safetensors"))
        split = {n: {k[len(n) + 1 :]: v for k, v in weights.items() if k.startswith(n + ".")} for n in names}
        return LoadedCheckpoint(path, int(path.name[len(PREFIX) :]), state, skipped, split)
    if skipped:
        return LoadedCheckpoint(root, -1, {}, skipped)
    return None
