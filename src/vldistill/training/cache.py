"""The teacher cache: frozen teachers' targets computed once, stored as safetensors shards.

Layout of one cache (``<cache dir>/teachers/<key>/``): shards ``shard-<generation>-r<rank>-<i>.safetensors``
(one row per example; tensor ``<teacher>/<field>`` for each target, the example uids in the file's
metadata) and ``meta.json`` (the key's parts and the shard list), written last and atomically.

- **Key.** sha256 of every teacher's fingerprint (architecture, weights, processor), the method's
  target settings, the storage dtype, and the training split's annotation files. Anything that
  changes a target changes the key, so a stale cache is never used: it is simply another key.
- **Incremental.** A cache covers the examples it was built for; a run that needs more (another
  low-shot subset of the same split) computes only the missing rows, in new shards.
- **Memory-mapped.** Shards are read with ``numpy.memmap`` at the offsets of the safetensors header,
  so looking up a batch touches only its rows; a cache larger than RAM works.
- **Distributed.** Under accelerate each rank computes every ``world``-th batch of the missing rows
  into its own shards; the main process then lists all shards in ``meta.json``; every rank reads all.
- **Concurrent runs.** Single-process runs that share a cache (a protocol's runs at once, ``--jobs``)
  take turns on a file lock (``.build.lock``, the ``filelock`` package): the first computes the
  missing rows, the next finds them there; two never write the same shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import save_file

from vldistill.data.examples import TaskExample
from vldistill.data.loader import ImageStore
from vldistill.errors import DataError

META = "meta.json"
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BOOL": np.bool_, "I32": np.int32}


def cache_key(teacher_fingerprints: dict[str, str], settings: dict[str, Any], data_fingerprint: str, fp16: bool) -> str:
    payload = {"teachers": teacher_fingerprints, "settings": settings, "data": data_fingerprint, "fp16": fp16}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one: each shard of an open cache holds a descriptor."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit as it is
        return


class _Shard:
    """One safetensors file mapped once; each tensor is a zero-copy view of the mapping.

    One mapping (and so one file descriptor) per shard, not per tensor: a cache of thousands of
    shards must stay under the open-file limit (measured: 1,470 shards x 4 tensors needed 5,886
    descriptors when each tensor had its own ``numpy.memmap``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > size - 8:
                    raise ValueError(f"header length {length} runs past the end of the file")
                header = json.loads(f.read(length))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            meta = header.pop("__metadata__", {})
            self.uids: list[str] = json.loads(meta.get("uids", "[]"))
            entries = [
                (name, info["data_offsets"], info["dtype"], tuple(info["shape"])) for name, info in header.items()
            ]
        except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError) as err:
            raise DataError(
                path,
                None,
                f"unreadable cache shard ({err})",
                "delete the cache folder (or run `vldistill cache build`) to rebuild it",
            ) from err
        base = 8 + length
        self.arrays: dict[str, np.ndarray] = {}
        try:
            mapping = np.memmap(path, dtype=np.uint8, mode="r")
        except OSError as err:
            raise DataError(
                path,
                None,
                f"cannot map cache shard ({err})",
                "raise the open-file limit (ulimit -n) or rebuild the cache with larger shards (cache.shard_size)",
            ) from err
        for name, (start, end), dtype_name, shape in entries:
            dtype = _DTYPES.get(dtype_name)
            if dtype is None or base + end > size:
                raise DataError(
                    path,
                    name,
                    "truncated or unsupported tensor in cache shard",
                    "delete the cache folder to rebuild it",
                )
            self.arrays[name] = mapping[base + start : base + end].view(dtype).reshape(shape)


class TeacherCache:
    """Targets of a method's teachers for a set of examples, looked up by example uid."""

    def __init__(self, folder: Path, fp16: bool) -> None:
        _raise_open_file_limit()
        self.folder = folder
        self.fp16 = fp16
        self.shards: list[_Shard] = []
        self.rows: dict[str, tuple[int, int]] = {}
        self.reload()

    def reload(self) -> None:
        self.shards, self.rows = [], {}
        meta_path = self.folder / META
        if not meta_path.is_file():
            return
        try:
            meta = json.loads(meta_path.read_text())
            names = meta["shards"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(meta_path, None, f"unreadable cache index ({err})", "delete the cache folder") from err
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(
                meta_path,
                None,
                "unreadable cache index ('shards' is not a list of file names)",
                "delete the cache folder",
            )
        for name in names:
            if Path(name).name != name or not name.startswith("shard-"):
                raise DataError(
                    meta_path,
                    None,
                    f"unreadable cache index (shard {name!r} points outside the cache folder)",
                    "delete the cache folder",
                )
        for i, name in enumerate(names):
            shard = _Shard(self.folder / name)
            self.shards.append(shard)
            for row, uid in enumerate(shard.uids):
                self.rows[uid] = (i, row)

    def missing(self, examples: Sequence[TaskExample]) -> list[TaskExample]:
        return [ex for ex in examples if ex.uid not in self.rows]

    def lookup(
        self, examples: Sequence[TaskExample], device: torch.device | str = "cpu"
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Targets of ``examples`` (teacher -> field -> ``(B, ...)``), as the live teacher returns them."""
        try:
            where = [self.rows[ex.uid] for ex in examples]
        except KeyError as err:
            raise DataError(
                self.folder,
                f"uid {err.args[0]}",
                "example missing from the teacher cache",
                "run `vldistill cache build` with this config",
            ) from None
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for position, (shard, row) in enumerate(where):
            positions, rows = groups.setdefault(shard, ([], []))
            positions.append(position)
            rows.append(row)
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name in self.shards[where[0][0]].arrays:
            first = self.shards[where[0][0]].arrays[name]
            values = np.empty((len(where), *first.shape[1:]), dtype=first.dtype)
            for shard, (positions, rows) in groups.items():  # one fancy-indexed read per shard
                values[positions] = self.shards[shard].arrays[name][rows]
            t = torch.from_numpy(values)
            if t.dtype == torch.float16:
                t = t.float()
            teacher, field = name.split("/", 1)
            out.setdefault(teacher, {})[field] = t.to(device)
        return out

    def write_shard(
        self, name: str, examples: Sequence[TaskExample], targets: dict[str, dict[str, torch.Tensor]]
    ) -> None:
        tensors = {}
        for teacher, fields in targets.items():
            for field, value in fields.items():
                value = value.detach().cpu()
                if self.fp16 and value.is_floating_point():
                    value = value.half()
                tensors[f"{teacher}/{field}"] = value.contiguous()
        tmp = self.folder / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"uids": json.dumps([ex.uid for ex in examples])})
        os.replace(tmp, self.folder / name)

    def publish(self, key_parts: dict[str, Any]) -> None:
        """List every shard in ``meta.json`` (atomically), then reload."""
        names = sorted(p.name for p in self.folder.glob("shard-*.safetensors"))
        tmp = self.folder / f".{META}.tmp"
        tmp.write_text(json.dumps({"key": key_parts, "shards": names}, indent=1))
        os.replace(tmp, self.folder / META)
        self.reload()


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
    store: ImageStore | None = None,
) -> TeacherCache:
    """Open the cache in ``folder`` and compute the rows ``examples`` still miss (split over ranks).

    Teachers run on batches of ``batch_size``; rows are written in shards of about ``shard_size``.
    Rank ``r`` computes every ``world``-th batch and writes its own shards. A single-process run holds
    the folder's lock meanwhile, so concurrent runs take turns (the ranks of one run share the work).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if world == 1:
        with FileLock(folder / ".build.lock"):
            return _ensure(folder, method, examples, fp16, key_parts, batch_size, shard_size, 0, 1, barrier, store)
    return _ensure(folder, method, examples, fp16, key_parts, batch_size, shard_size, rank, world, barrier, store)


def _ensure(
    folder: Path,
    method: Any,
    examples: Sequence[TaskExample],
    fp16: bool,
    key_parts: dict[str, Any],
    batch_size: int,
    shard_size: int,
    rank: int,
    world: int,
    barrier: Any,
    store: ImageStore | None,
) -> TeacherCache:
    cache = TeacherCache(folder, fp16)
    todo = cache.missing(examples)
    if todo:
        store = store or ImageStore()
        generation = hashlib.sha256(json.dumps(sorted(ex.uid for ex in todo)).encode()).hexdigest()[:8]
        pending: list[tuple[list[TaskExample], dict[str, dict[str, torch.Tensor]]]] = []
        written = 0

        def flush() -> None:
            nonlocal written
            if pending:
                rows = [ex for chunk, _ in pending for ex in chunk]
                merged = {
                    teacher: {f: torch.cat([t[teacher][f] for _, t in pending]) for f in fields}
                    for teacher, fields in pending[0][1].items()
                }
                cache.write_shard(f"shard-{generation}-r{rank}-{written:06d}.safetensors", rows, merged)
                written += 1
                pending.clear()

        for i, start in enumerate(range(0, len(todo), batch_size)):
            if i % world != rank:
                continue
            chunk = todo[start : start + batch_size]
            targets = method.targets_for(chunk, [[store(p) for p in ex.images] for ex in chunk])
            pending.append((chunk, {n: {f: v.detach().cpu() for f, v in fs.items()} for n, fs in targets.items()}))
            if sum(len(c) for c, _ in pending) >= shard_size:
                flush()
        flush()
        if barrier is not None:
            barrier()
        if rank == 0:
            cache.publish(key_parts)
        if barrier is not None:
            barrier()
        cache.reload()
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

    parts = {
        "teachers": {name: t.fingerprint() for name, t in sorted(method.teachers.items())},
        "settings": method.cache_settings(),
        "data": data.fingerprint,
        "fp16": cfg.cache.fp16,
    }
    key = cache_key(parts["teachers"], parts["settings"], parts["data"], cfg.cache.fp16)
    root = Path(cfg.cache.dir) if cfg.cache.dir else cache_dir() / "teachers"
    return ensure_cache(
        root / key,
        method,
        data.train,
        fp16=cfg.cache.fp16,
        key_parts=parts,
        batch_size=cfg.train.eval_batch_size,
        shard_size=cfg.cache.shard_size,
        rank=rank,
        world=world,
        barrier=barrier,
        store=store,
    )
