"""Building the teacher cache: compute the missing image, text and example rows, split over ranks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from vldistill.data.examples import TaskExample
from vldistill.data.loader import ImageStore
from vldistill.distill.targets import IMAGE_FIELDS, TEXT_FIELDS
from vldistill.training.cache.keys import Refs
from vldistill.training.cache.teacher_cache import FORMAT, TeacherCache, storage_of

Targets = dict[str, dict[str, torch.Tensor]]


def cache_key(
    teacher_fingerprints: dict[str, str],
    settings: dict[str, Any],
    data_fingerprint: str,
    fp16: bool,
    int8: bool = False,
) -> str:
    """The folder name of a cache: sha256 of the storage format and dtype, the teachers' fingerprints
    (architecture, weights, processor), the method's target settings and the training split's files."""
    payload = {
        "format": FORMAT,
        "teachers": teacher_fingerprints,
        "settings": settings,
        "data": data_fingerprint,
        "storage": storage_of(fp16, int8),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


class _Writer:
    """Buffers rows per store and writes a shard of a store once it holds ``shard_size`` rows.

    Example rows are written only after every image and text row buffered before them, so a shard
    list taken at any time (``publish`` globs the folder, even after a crash) never holds an example
    without its images and texts. ``seen``: image and text keys already buffered.
    """

    def __init__(self, cache: TeacherCache, generation: str, rank: int, shard_size: int) -> None:
        self.cache, self.generation, self.rank, self.shard_size = cache, generation, rank, shard_size
        self.pending: dict[str, list[tuple[list[str], Targets]]] = {}
        self.written = 0
        self.seen: set[str] = set()

    def add(self, store: str, keys: list[str], targets: Targets) -> None:
        if not keys:
            return
        cpu = {t: {f: v.detach().to("cpu", copy=True) for f, v in fs.items()} for t, fs in targets.items()}
        self.pending.setdefault(store, []).append((keys, cpu))
        if sum(len(k) for k, _ in self.pending[store]) >= self.shard_size:
            self.flush(store)

    def flush(self, store: str | None = None) -> None:
        order = ["images", "texts", "examples"]
        for name in order if store in (None, "examples") else [store]:
            chunks = self.pending.pop(name, [])
            if not chunks:
                continue
            keys = [k for ks, _ in chunks for k in ks]
            merged = {
                teacher: {f: torch.cat([t[teacher][f] for _, t in chunks]) for f in fields}
                for teacher, fields in chunks[0][1].items()
            }
            self.cache.write(name, f"{self.generation}-r{self.rank}-{self.written:06d}", keys, merged)
            self.written += 1


def _sync(cache: TeacherCache, key_parts: dict[str, Any], rank: int, barrier: Any, derived: Any = None) -> None:
    """Every rank has written its shards; the main one lists them all; then every rank reads them."""
    if barrier is not None:
        barrier()
    if rank == 0:
        cache.publish(key_parts, derived)
    if barrier is not None:
        barrier()
    cache.reload()


def _mine(items: Sequence[Any], size: int, rank: int, world: int) -> list[Sequence[Any]]:
    """This rank's batches: every ``world``-th batch of ``size`` items."""
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    return [b for i, b in enumerate(batches) if i % world == rank]


def _split(cache: TeacherCache, refs: list[Refs], targets: Targets, writer: _Writer) -> None:
    """Whole per-example targets (a method without ``target_parts``) -> image, text and example rows."""
    n_images, n_texts = len(refs[0].images), len(refs[0].texts)
    parts: dict[str, tuple[list[str], Targets]] = {}
    for store, keys in (("images", [k for r in refs for k in r.images]), ("texts", [k for r in refs for k in r.texts])):
        fresh: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in cache.stores[store] and key not in writer.seen:
                fresh.setdefault(key, i)
        parts[store] = (list(fresh), {})
        writer.seen.update(fresh)
        for teacher, fields in targets.items():
            kind = IMAGE_FIELDS if store == "images" else TEXT_FIELDS
            for field, value in fields.items():
                if field in kind:
                    per = n_images if store == "images" else n_texts
                    rows = value.repeat_interleave(per, 0) if field == "image_grid" else value.flatten(0, 1)
                    parts[store][1].setdefault(teacher, {})[field] = rows[list(fresh.values())]
    example_rows = {
        t: {f: v for f, v in fs.items() if f not in IMAGE_FIELDS | TEXT_FIELDS} for t, fs in targets.items()
    }
    for store, (keys, rows) in parts.items():
        if keys and rows:
            writer.add(store, keys, rows)
    writer.add("examples", [r.example for r in refs], example_rows)


def _build_by_parts(
    cache: TeacherCache,
    method: Any,
    todo: list[TaskExample],
    refs: list[Refs],
    writer: _Writer,
    load: Callable[[Path], Any],
    sync: Callable[[Any], None],
    batch_size: int,
    rank: int,
    world: int,
) -> None:
    """Images, then texts (each distinct one once), publish; then the example rows, publish."""
    parts = method.target_parts()
    task = todo[0].task
    images = {k: p for ex, r in zip(todo, refs, strict=True) for k, p in zip(r.images, ex.images, strict=True)}
    texts = {k: t for ex, r in zip(todo, refs, strict=True) for k, t in zip(r.texts, ex.texts, strict=True)}

    def drop_derived(targets: Targets) -> Targets:
        return {n: {f: v for f, v in fs.items() if f not in parts[n].derived} for n, fs in targets.items()}

    if any(p.image for p in parts.values()):
        needed = sorted(k for k in images if k not in cache.stores["images"])
        for keys in _mine(needed, batch_size, rank, world):
            writer.add("images", list(keys), drop_derived(method.image_targets(task, [load(images[k]) for k in keys])))
    if any(p.text for p in parts.values()):
        needed = sorted(k for k in texts if k not in cache.stores["texts"])
        for keys in _mine(needed, batch_size, rank, world):
            writer.add("texts", list(keys), drop_derived(method.text_targets(task, [texts[k] for k in keys])))
    writer.flush()
    sync({n: p.derived for n, p in parts.items() if p.derived})

    live = any(p.pair == "live" for p in parts.values())
    scored = [n for n, p in parts.items() if p.pair == "candidates"]
    pairs = list(zip(todo, refs, strict=True))
    for chunk in _mine(pairs, batch_size, rank, world):
        examples = [ex for ex, _ in chunk]
        decoded = [[load(p) for p in ex.images] for ex in examples] if live else None
        embeds = {n: cache.image_field(examples, f"{n}/image_embeds") for n in scored}
        writer.add("examples", [r.example for _, r in chunk], method.example_targets(examples, decoded, embeds))
    writer.flush()


def ensure_cache(
    folder: Path,
    method: Any,
    examples: Sequence[TaskExample],
    *,
    fp16: bool,
    key_parts: dict[str, Any],
    batch_size: int = 32,
    shard_size: int = 1024,
    rank: int = 0,
    world: int = 1,
    barrier: Any = None,
    store: ImageStore | Callable[[Path], Any] | None = None,
    int8: bool = False,
) -> TeacherCache:
    """Open the cache in ``folder`` and compute the rows ``examples`` still miss (split over ranks).

    A method with ``target_parts`` (every ``vldistill`` method) gets its distinct missing images and
    texts computed once each (``Method.image_targets`` / ``text_targets``, batches of ``batch_size``),
    published, then its missing example rows (``Method.example_targets``, candidate scores from the
    stored image embeddings). Any other object with ``targets_for`` has its whole per-example targets
    split into the three stores. Rows are written in shards of about ``shard_size``; rank ``r`` computes
    every ``world``-th batch of each phase. A single-process run holds the folder's lock meanwhile, so
    concurrent runs take turns (the ranks of one run share the work).
    """
    folder.mkdir(parents=True, exist_ok=True)
    args = (folder, method, examples, fp16, int8, key_parts, batch_size, shard_size, rank, world, barrier, store)
    if world == 1:
        with FileLock(folder / ".build.lock"):
            return _ensure(*args)
    return _ensure(*args)


def _ensure(
    folder: Path,
    method: Any,
    examples: Sequence[TaskExample],
    fp16: bool,
    int8: bool,
    key_parts: dict[str, Any],
    batch_size: int,
    shard_size: int,
    rank: int,
    world: int,
    barrier: Any,
    store: ImageStore | Callable[[Path], Any] | None,
) -> TeacherCache:
    cache = TeacherCache(folder, fp16, int8=int8)
    unique: dict[str, tuple[TaskExample, Refs]] = {}
    for ex in examples:
        refs = cache.refs(ex)
        if refs.example not in cache.stores["examples"]:
            unique.setdefault(refs.example, (ex, refs))
    cache.computed = len(unique)
    if not unique:
        if rank == 0:
            cache.keys.save()  # digests computed anew (e.g. a cache copied to another disk) are kept for next time
        return cache
    todo = [ex for ex, _ in unique.values()]
    refs = [r for _, r in unique.values()]
    load = store or ImageStore()
    generation = hashlib.sha256(json.dumps(sorted(unique)).encode()).hexdigest()[:8]
    writer = _Writer(cache, generation, rank, shard_size)
    if hasattr(method, "target_parts"):
        sync = lambda derived: _sync(cache, key_parts, rank, barrier, derived)  # noqa: E731
        _build_by_parts(cache, method, todo, refs, writer, load, sync, batch_size, rank, world)
    else:
        for chunk in _mine(list(zip(todo, refs, strict=True)), batch_size, rank, world):
            examples_ = [ex for ex, _ in chunk]
            targets = method.targets_for(examples_, [[load(p) for p in ex.images] for ex in examples_])
            _split(cache, [r for _, r in chunk], targets, writer)
        writer.flush()
    _sync(cache, key_parts, rank, barrier)
    return cache


def open_teacher_cache(
    cfg: Any,
    data: Any,
    method: Any,
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Any = None,
    store: ImageStore | None = None,
) -> TeacherCache:
    """The cache of ``cfg``'s teachers over ``data.train``, built or extended as needed."""
    from vldistill.config import cache_dir

    c = cfg.cache
    parts = {
        "format": FORMAT,
        "teachers": {name: t.fingerprint() for name, t in sorted(method.teachers.items())},
        "settings": method.cache_settings(),
        "data": data.fingerprint,
        "storage": storage_of(c.fp16, c.int8),
    }
    key = cache_key(parts["teachers"], parts["settings"], parts["data"], c.fp16, c.int8)
    root = Path(c.dir) if c.dir else cache_dir() / "teachers"
    return ensure_cache(
        root / key,
        method,
        data.train,
        fp16=c.fp16,
        int8=c.int8,
        key_parts=parts,
        batch_size=cfg.train.eval_batch_size,
        shard_size=c.shard_size,
        rank=rank,
        world=world,
        barrier=barrier,
        store=store,
    )
