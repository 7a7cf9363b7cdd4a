"""Everything a config builds before the first step: data, student, processor, teachers, method.

Shared by ``train``, ``plan`` and ``cache build`` so that all three see exactly the same examples
and models.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vldistill.config import DataConfig, ExperimentConfig, cache_dir
from vldistill.data.examples import TaskExample
from vldistill.data.loader import examples_with_images
from vldistill.data.readers import read_task, read_task_report
from vldistill.data.records import Record
from vldistill.data.subsets import apply_manifest, low_shot, write_manifest
from vldistill.data.tasks import ExampleBuilder
from vldistill.distill.methods import Method, build_method
from vldistill.errors import ConfigError
from vldistill.models.processing import Processor
from vldistill.models.students import build_student, student_processor
from vldistill.models.teachers.factory import build_teacher

WORLD_PREFIX = "world"


def resolve_root(root: str, style: str, task: str, scale: float) -> Path:
    """A dataset root; ``world`` / ``world:shifted`` generate the world (once) under the cache folder."""
    if root == WORLD_PREFIX or root.startswith(WORLD_PREFIX + ":"):
        from vldistill.data.world import generate_world

        style = root.split(":", 1)[1] if ":" in root else style
        if style not in ("base", "shifted"):
            raise ConfigError(f"data root '{root}': unknown world style; fix: use world:base or world:shifted")
        world = cache_dir() / "world" / f"scale-{scale:g}"
        generate_world(world, style=style, seed=0, scale=scale)
        return world / style / task
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data.root '{root}' is not a folder; fix: give the dataset root, or 'world'")
    return path


def _read(task: str, root: Path, split: str, skip_bad: bool, verbose: bool = True) -> list[Record]:
    """A split's records; with ``skip_bad`` defective records are skipped and listed on stderr (``verbose``)."""
    if not skip_bad:
        return read_task(task, root, split)
    records, skipped = read_task_report(task, root, split)
    if skipped and verbose:
        print(f"warning: skipped {len(skipped)} bad record(s) of {task} {split} at {root}:", file=sys.stderr)
        for line in skipped.lines():
            print(f"  {line}", file=sys.stderr)
    return records


def _first_records(examples: list[TaskExample], n: int) -> list[TaskExample]:
    keep: list[str] = []
    for ex in examples:
        rid = ex.meta.get("record", ex.uid)
        if rid not in keep:
            if len(keep) == n:
                break
            keep.append(rid)
    wanted = set(keep)
    return [ex for ex in examples if ex.meta.get("record", ex.uid) in wanted]


@dataclass
class EvalSet:
    """An evaluation split: its examples and records (the official metrics need the raw records)."""

    name: str
    examples: list[TaskExample]
    records: dict[str, Record]


@dataclass
class DataBundle:
    task: str
    builder: ExampleBuilder
    train: list[TaskExample]
    evals: dict[str, EvalSet]
    fingerprint: str
    sources: list[str] = field(default_factory=list)


def _record_id(rec: Record) -> str:
    for attr in ("question_id", "pair_id", "annot_id", "identifier"):
        if hasattr(rec, attr):
            return str(getattr(rec, attr))
    raise TypeError(type(rec).__name__)


def _files_digest(root: Path, split: str) -> str:
    """sha256 over the split's annotation files (the images are keyed by name and size)."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.iterdir() if p.is_file() and split in p.name):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def load_data(cfg: DataConfig, out_dir: Path | None = None, *, verbose: bool = True) -> DataBundle:
    """Read the splits, build examples, draw the low-shot subset and save its manifest in ``out_dir``.

    Examples whose images are missing (or, with ``skip_bad``, unreadable) are dropped here, before
    training and evaluation (:func:`~vldistill.data.loader.examples_with_images`); without
    ``skip_bad`` a missing image is a ``DataError``. ``verbose``: report skipped records and images
    on stderr (one process of several says it once).
    """
    train_split, eval_split = cfg.splits()
    root = resolve_root(cfg.root, cfg.style, cfg.task, cfg.world_scale)
    train_records = _read(cfg.task, root, train_split, cfg.skip_bad, verbose)
    builder = ExampleBuilder(cfg.task, train_records, min_answer_count=cfg.min_answer_count)
    train = builder(train_records)
    if cfg.max_train:  # a cap on the training set itself: low-shot fractions are fractions of it
        train = _first_records(train, cfg.max_train)
    if cfg.manifest:
        train = apply_manifest(Path(cfg.manifest), train)
    elif cfg.fraction is not None or cfg.per_group is not None:
        train = low_shot(train, fraction=cfg.fraction, per_group=cfg.per_group, seed=cfg.subset_seed)
    train = examples_with_images(train, skip_bad=cfg.skip_bad, where=f"{cfg.task} {train_split}", report=verbose)
    if out_dir is not None:
        write_manifest(
            out_dir / "subset.json",
            train,
            task=cfg.task,
            root=str(root),
            split=train_split,
            fraction=cfg.fraction,
            per_group=cfg.per_group,
            seed=cfg.subset_seed,
            max_train=cfg.max_train,
        )
    evals: dict[str, EvalSet] = {}
    sources = [f"{root}:{train_split}"]
    roots = {"eval": root}
    if cfg.shift_root:
        roots["shifted"] = resolve_root(cfg.shift_root, cfg.style, cfg.task, cfg.world_scale)
    for name, r in roots.items():
        records = _read(cfg.task, r, eval_split, cfg.skip_bad, verbose)
        examples = builder(records)
        if cfg.max_eval:
            examples = _first_records(examples, cfg.max_eval)
        examples = examples_with_images(
            examples, skip_bad=cfg.skip_bad, where=f"{cfg.task} {eval_split} ({name})", report=verbose
        )
        evals[name] = EvalSet(name, examples, {_record_id(rec): rec for rec in records})
        sources.append(f"{r}:{eval_split}")
    # The split's files, not the subset: one teacher cache serves every subset of a split.
    digest = hashlib.sha256(f"{cfg.task}:{train_split}:{_files_digest(root, train_split)}".encode()).hexdigest()
    return DataBundle(cfg.task, builder, train, evals, digest, sources)


@dataclass
class Built:
    student: nn.Module
    processor: Processor
    method: Method


def build_models(cfg: ExperimentConfig, data: DataBundle) -> Built:
    """The student, its processor and the method with its frozen teachers.

    Seeded by ``train.seed``: randomly initialised parts (tiny models, new heads) come out the same
    in ``train``, ``plan`` and ``cache build``, so their teacher fingerprints agree.
    """
    if cfg.method.name == "dide" and cfg.student.kind != "dual":
        raise ConfigError(
            "method dide distils a fusion teacher into a dual-encoder student; fix: set student.kind: dual"
        )
    torch.manual_seed(cfg.train.seed)
    answers = data.builder.answers or None
    student = build_student(cfg.student, data.task, data.builder.num_labels, answers)
    teachers = {
        name: build_teacher(t, task=data.task, key=f"method.teachers.{name}") for name, t in cfg.method.teachers.items()
    }
    method = build_method(cfg.method, teachers, data.task, answers)
    return Built(student, student_processor(cfg.student), method)
