"""Everything a config builds before the first step: data, student, processor, teachers, method.

Shared by ``train``, ``plan`` and ``cache build`` so that all three see exactly the same examples
and models.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vldistill.config import DataConfig, ExperimentConfig, cache_dir
from vldistill.data.examples import TaskExample
from vldistill.data.loader import examples_with_images
from vldistill.data.readers import read_task, read_task_report, split_digest
from vldistill.data.records import Record
from vldistill.data.subsets import apply_manifest, low_shot, write_manifest
from vldistill.data.tasks import VE_PROMPTS, VQA_PROMPT, ExampleBuilder
from vldistill.distill.methods import Method, build_method
from vldistill.errors import ConfigError
from vldistill.models.processing import Processor
from vldistill.models.students import build_student, student_processor
from vldistill.models.teachers.factory import build_teacher

WORLD_PREFIX = "world"
DEV_HOLDOUT_SEED = "vldistill/dev-holdout"
"""The seed of ``data.dev_holdout``'s draw: fixed, so every method, seed and subset selects on one dev set."""


def world_dir(scale: float, seed: int = 0) -> Path:
    """The cache folder of the generated world of ``scale`` drawn with ``seed`` (``data.world_seed``)."""
    return cache_dir() / "world" / (f"scale-{scale:g}" + (f"-seed{seed}" if seed else ""))


def resolve_root(root: str, style: str, task: str, scale: float, seed: int = 0) -> Path:
    """A dataset root; ``world`` / ``world:shifted`` generate the world (once) under the cache folder.

    ``scale`` and ``seed`` are ``data.world_scale`` and ``data.world_seed`` (another draw of the world).
    """
    if root == WORLD_PREFIX or root.startswith(WORLD_PREFIX + ":"):
        from vldistill.data.world import generate_world

        style = root.split(":", 1)[1] if ":" in root else style
        if style not in ("base", "shifted"):
            raise ConfigError(f"data root '{root}': unknown world style; fix: use world:base or world:shifted")
        world = world_dir(scale, seed)
        generate_world(world, style=style, seed=seed, scale=scale)
        return world / style / task
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data.root '{root}' is not a folder; fix: give the dataset root, or 'world'")
    return path


def _read(cfg: DataConfig, root: Path, split: str, verbose: bool = True) -> list[Record]:
    """A split's records; with ``skip_bad`` defective records are skipped and listed on stderr (``verbose``)."""
    task, skip_bad = cfg.task, cfg.skip_bad
    if not skip_bad:
        return read_task(task, root, split, layout=cfg.layout())
    records, skipped = read_task_report(task, root, split, layout=cfg.layout())
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
    """What a run trains on (``train``), selects on (``dev``, or ``None``) and reports (``evals``).

    ``evals`` maps ``"eval"`` (and ``"shifted"`` with a ``shift_root``) to the evaluation splits.
    """

    task: str
    builder: ExampleBuilder
    train: list[TaskExample]
    evals: dict[str, EvalSet]
    fingerprint: str
    sources: list[str] = field(default_factory=list)
    dev: EvalSet | None = None


def _record_of(ex: TaskExample) -> str:
    return ex.meta.get("record", ex.uid)


def hold_out_dev(examples: list[TaskExample], holdout: int | float) -> tuple[list[TaskExample], list[TaskExample]]:
    """Split ``examples`` into ``(rest, dev)``: ``holdout`` records (an int) or that fraction of them (a float).

    Records (a VCR record's two examples stay together) are grouped by image: records that share a
    picture (an NLVR2 pair shares two) form one group, and whole groups go to the dev set, so no
    picture is both trained on and selected on. Groups are drawn in a fixed random order
    (``DEV_HOLDOUT_SEED``, independent of the input order and of every run seed) until the dev set holds
    at least ``holdout`` records (a fraction: ``max(1, round(fraction * records))``). Both lists keep the
    input order.

    Raises:
        ConfigError: the dev set would take every training record.
    """
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    records: dict[str, set[str]] = {}
    for ex in examples:
        records.setdefault(_record_of(ex), set()).update(str(p) for p in ex.images)
    for images in records.values():
        first, *others = sorted(images)
        for other in others:
            parent[find(other)] = find(first)
    groups: dict[str, list[str]] = {}
    for rid, images in records.items():
        groups.setdefault(find(min(images)), []).append(rid)
    order = sorted(sorted(g) for g in groups.values())
    random.Random(DEV_HOLDOUT_SEED).shuffle(order)
    wanted = holdout if isinstance(holdout, int) else max(1, round(holdout * len(records)))
    chosen: set[str] = set()
    for group in order:
        if len(chosen) >= wanted:
            break
        chosen.update(group)
    if len(chosen) >= len(records):
        raise ConfigError(
            f"data.dev_holdout ({holdout}) takes all {len(records)} training records (records sharing an image "
            "stay together); fix: hold out fewer records, or use data.dev_split"
        )
    return [ex for ex in examples if _record_of(ex) not in chosen], [ex for ex in examples if _record_of(ex) in chosen]


def _record_id(rec: Record) -> str:
    for attr in ("question_id", "pair_id", "annot_id", "identifier"):
        if hasattr(rec, attr):
            return str(getattr(rec, attr))
    raise TypeError(type(rec).__name__)


def _read_eval_set(
    cfg: DataConfig, builder: ExampleBuilder, root: Path, split: str, name: str, verbose: bool
) -> tuple[EvalSet, str]:
    """An evaluation (or dev) split: its examples (at most ``max_eval`` records, with their images) and records."""
    records = _read(cfg, root, split, verbose)
    examples = builder(records)
    if cfg.max_eval:
        examples = _first_records(examples, cfg.max_eval)
    examples = examples_with_images(
        examples, skip_bad=cfg.skip_bad, where=f"{cfg.task} {split} ({name})", report=verbose
    )
    return EvalSet(name, examples, {_record_id(rec): rec for rec in records}), f"{root}:{split}"


def load_data(cfg: DataConfig, out_dir: Path | None = None, *, verbose: bool = True) -> DataBundle:
    """Read the splits, build examples, draw the dev holdout and the low-shot subset, save the manifest in ``out_dir``.

    In order: the training split (``max_train`` caps it), the dev holdout (``data.dev_holdout``, see
    :func:`hold_out_dev`), the low-shot subset of the rest (or a manifest). ``data.dev_split`` is read as
    an evaluation split is (``max_eval`` caps it too).

    Examples whose images are missing (or, with ``skip_bad``, unreadable) are dropped here, before
    training and evaluation (:func:`~vldistill.data.loader.examples_with_images`); without
    ``skip_bad`` a missing image is a ``DataError``. ``verbose``: report skipped records and images
    on stderr (one process of several says it once).
    """
    train_split, eval_split = cfg.splits()
    root = resolve_root(cfg.root, cfg.style, cfg.task, cfg.world_scale, cfg.world_seed)
    train_records = _read(cfg, root, train_split, verbose)
    builder = ExampleBuilder(
        cfg.task,
        train_records,
        min_answer_count=cfg.min_answer_count,
        ve_prompts=cfg.ve_prompts,
        vqa_prompt=cfg.vqa_prompt,
    )
    train = builder(train_records)
    if cfg.max_train:  # a cap on the training set itself: low-shot fractions are fractions of it
        train = _first_records(train, cfg.max_train)
    dev = None
    if cfg.dev_holdout is not None:
        train, held_out = hold_out_dev(train, cfg.dev_holdout)
        held_out = examples_with_images(
            held_out, skip_bad=cfg.skip_bad, where=f"{cfg.task} {train_split} (dev holdout)", report=verbose
        )
        dev = EvalSet("dev", held_out, {_record_id(rec): rec for rec in train_records})
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
            dev_split=cfg.dev_split,
            dev_holdout=cfg.dev_holdout,
        )
    sources = [f"{root}:{train_split}"]
    if cfg.dev_split is not None:
        dev, source = _read_eval_set(cfg, builder, root, cfg.dev_split, "dev", verbose)
        sources.append(source)
    roots = {"eval": root}
    if cfg.shift_root:
        roots["shifted"] = resolve_root(cfg.shift_root, cfg.style, cfg.task, cfg.world_scale, cfg.world_seed)
    evals: dict[str, EvalSet] = {}
    for name, r in roots.items():
        evals[name], source = _read_eval_set(cfg, builder, r, eval_split, name, verbose)
        sources.append(source)
    # The split's files, not the subset: one teacher cache serves every subset of a split.
    # The zero-shot prompts are part of the teacher's targets (candidate scores), so of the cache key.
    prompts = (
        json.dumps([cfg.ve_prompts, cfg.vqa_prompt])
        if (cfg.ve_prompts, cfg.vqa_prompt) != (VE_PROMPTS, VQA_PROMPT)
        else ""
    )
    digest = hashlib.sha256(
        f"{cfg.task}:{train_split}:{split_digest(cfg.task, root, train_split, cfg.layout())}{prompts}".encode()
    ).hexdigest()
    return DataBundle(cfg.task, builder, train, evals, digest, sources, dev)


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
