"""Peak memory of reading a teacher cache larger than RAM, memory-mapped.

Builds a synthetic teacher cache with the real builder (``ensure_cache`` with a method that has only
``targets_for``: its per-example targets are split into image, text and example rows): CLIP-B/16-sized
targets per example (196 image tokens x 768 and 32 words x 512, plus the two 512-wide embeddings; about
330 KiB with the tokens in float16), each example with its own image file (a few bytes: rows are keyed
by the file's hash) and its own text, 64 rows per shard. Then it evicts the shards from the page cache, opens the cache
with ``TeacherCache`` and reads it in random batches through ``lookup`` while a thread samples this
process's memory (``/proc/self/status``) every 0.5 s and once after every batch.

    python bench/cache_memory.py                         # 1.25 x MemTotal, in the temp folder
    python bench/cache_memory.py --size-gb 2 --dir /data --json mem.json --keep

What matters is ``RssAnon`` (memory the process owns) against the cache size: the shards are
``numpy.memmap`` file pages, counted in ``RssFile``; they belong to the kernel's page cache, which
evicts them under pressure. Every batch checks one of its rows against what was written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vldistill.data.examples import TaskExample
from vldistill.training.cache import TeacherCache, ensure_cache, storage_of
from vldistill.training.cache.shards import encode

# teacher -> field -> shape of one example's row (what ``unimodal_targets`` stores for a VQA example).
FIELDS: dict[str, dict[str, tuple[int, ...]]] = {
    "clip": {
        "image_tokens": (1, 196, 768),
        "image_embeds": (1, 512),
        "text_words": (1, 32, 512),
        "text_embeds": (1, 512),
    },
}
STAMP_BASE = 1024  # each row starts with its example index in 3 base-1024 digits: exact in float16
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
MIB = 2**20
GIB = 2**30


def meminfo_bytes(field: str = "MemTotal") -> int:
    """A ``/proc/meminfo`` figure in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def process_memory() -> dict[str, int]:
    """This process's ``VmRSS``, ``RssAnon``, ``RssFile`` and ``VmHWM`` in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in STATUS_FIELDS:
            values[name] = int(rest.split()[0]) * 1024
    return values


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (``/proc/self/clear_refs``, Linux >= 4.0); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class MemorySampler:
    """Samples :func:`process_memory` every ``interval`` seconds in a thread (and on :meth:`sample`)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        values: dict[str, float] = {"t": round(time.perf_counter() - self.start, 3), **process_memory()}
        with self._lock:
            self.samples.append(values)

    def peaks(self) -> dict[str, int]:
        with self._lock:
            return {name: int(max(s[name] for s in self.samples)) for name in STATUS_FIELDS}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def uid_of(index: int) -> str:
    return f"synthetic-{index:09d}"


def example_of(index: int, images: Path) -> TaskExample:
    """A VQA example with its own image file in ``images`` (see :func:`write_images`) and its own text."""
    return TaskExample(uid=uid_of(index), task="vqa", images=(images / uid_of(index),), texts=(f"text {index}",))


def write_images(images: Path, n_examples: int) -> None:
    """One small distinct file per example: the cache keys image rows by the file's bytes."""
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n_examples):
        (images / uid_of(i)).write_bytes(uid_of(i).encode())


class SyntheticMethod:
    """A method with ``targets_for`` only: the rows of ``SyntheticRows`` for consecutive examples."""

    def __init__(self, rows: SyntheticRows) -> None:
        self.rows = rows

    def targets_for(self, examples: list[TaskExample], images: list) -> dict[str, dict[str, torch.Tensor]]:
        first = int(examples[0].uid.rsplit("-", 1)[1])
        return self.rows.fill(first, len(examples))


class SyntheticRows:
    """Deterministic target rows: example ``i`` is row ``i % (rows_per_shard + 1)`` of a random pool
    with ``i`` stamped into its first 3 values, so every row differs and can be recomputed to check it.

    The writer fills one reused buffer per field, ``(rows_per_shard, *shape)``, per shard with one
    contiguous copy (the pool is stored twice over, so any ``rows_per_shard`` consecutive rows are one
    slice): no random numbers are drawn per shard and no shard is held after it is written.
    """

    def __init__(
        self,
        dtype: torch.dtype,
        rows_per_shard: int,
        seed: int = 0,
        fields: dict[str, dict[str, tuple[int, ...]]] = FIELDS,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.dtype = dtype
        self.rows_per_shard = rows_per_shard
        self.period = rows_per_shard + 1  # each shard sees the pool rotated by one more row
        self.pool = {
            t: {
                f: torch.randn((self.period, *shape), generator=generator).to(dtype).repeat(2, *[1] * len(shape))
                for f, shape in fs.items()
            }
            for t, fs in fields.items()
        }
        self.buffers = {
            t: {f: torch.empty((rows_per_shard, *shape), dtype=dtype) for f, shape in fs.items()}
            for t, fs in fields.items()
        }

    @property
    def bytes_per_example(self) -> int:
        """Bytes stored per example (one image row and one text row): float16 tokens, float32 vectors."""
        storage = "float16" if self.dtype == torch.float16 else "float32"
        return sum(
            t.numel() * t.element_size()
            for fs in self.pool.values()
            for p in fs.values()
            for t in encode("x", p[:1].flatten(0, 1), storage).values()
        )

    @staticmethod
    def stamp(indices: torch.Tensor) -> torch.Tensor:
        """``(N,)`` example indices -> ``(N, 3)`` base-1024 digits (float; exact in float16)."""
        return torch.stack([(indices // STAMP_BASE**k) % STAMP_BASE for k in (2, 1, 0)], dim=1).float()

    def fill(self, start: int, count: int) -> dict[str, dict[str, torch.Tensor]]:
        """Rows of examples ``start .. start + count - 1`` (teacher -> field -> ``(count, *shape)``)."""
        indices = torch.arange(start, start + count)
        out: dict[str, dict[str, torch.Tensor]] = {}
        for teacher, fields in self.pool.items():
            for field, pool in fields.items():
                buffer = self.buffers[teacher][field][:count]
                offset = start % self.period
                buffer.copy_(pool[offset : offset + count])  # index_select is ~50x slower for float16
                buffer.view(count, -1)[:, :3] = self.stamp(indices).to(self.dtype)
                out.setdefault(teacher, {})[field] = buffer
        return out

    def expected(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        """Example ``index``'s rows as ``TeacherCache.lookup`` returns them (float32, ``shape``)."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for teacher, fields in self.pool.items():
            for field, pool in fields.items():
                row = pool[index % self.period].to(torch.float32, copy=True)  # the stamp's digits are exact
                row.view(-1)[:3] = self.stamp(torch.tensor([index]))[0]
                out.setdefault(teacher, {})[field] = row
        return out


def check_disk(folder: Path, size_bytes: int) -> None:
    """Refuse (``SystemExit``) unless ``folder``'s disk has the cache's size + 10% free."""
    free = shutil.disk_usage(folder).free
    if free < 1.1 * size_bytes:
        raise SystemExit(
            f"not enough disk space in {folder}: the cache needs {size_bytes / GIB:.2f} GiB + 10%, "
            f"only {free / GIB:.2f} GiB is free; pass --dir on a bigger disk or a smaller --size-gb"
        )


def write_cache(folder: Path, n_examples: int, rows: SyntheticRows, fp16: bool) -> dict[str, Any]:
    """Write ``n_examples`` synthetic examples with the real builder (``ensure_cache``), and time it."""
    images = folder / "images"
    write_images(images, n_examples)
    examples = [example_of(j, images) for j in range(n_examples)]
    start = time.perf_counter()
    ensure_cache(
        folder,
        SyntheticMethod(rows),
        examples,
        fp16=fp16,
        key_parts={"synthetic": True, "examples": n_examples, "storage": storage_of(fp16)},
        batch_size=rows.rows_per_shard,
        shard_size=rows.rows_per_shard,
        store=lambda path: None,  # the synthetic method never looks at pixels
    )
    write_s = time.perf_counter() - start
    os.sync()  # the read must not find dirty pages still on their way to the disk
    sync_s = time.perf_counter() - start - write_s
    shards = len(list(folder.glob("shard-*.safetensors")))
    on_disk = sum(p.stat().st_size for p in folder.glob("shard-*.safetensors"))
    return {
        "shards": shards,
        "examples": n_examples,
        "bytes_on_disk": on_disk,
        "write_seconds": round(write_s, 2),
        "sync_seconds": round(sync_s, 2),
        "write_mb_per_s": round(on_disk / MIB / (write_s + sync_s), 1),
    }


def evict_from_page_cache(folder: Path) -> None:
    """Drop the shards' pages from the page cache, so the read starts cold (as a cache > RAM would)."""
    for path in folder.glob("shard-*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_cache(
    folder: Path,
    n_examples: int,
    rows: SyntheticRows,
    fp16: bool,
    sampler: MemorySampler,
    *,
    batch_size: int,
    max_batches: int | None,
    max_seconds: float,
    seed: int,
) -> dict[str, Any]:
    """Open the cache and look up random batches (a full pass in random order, or fewer batches);
    check one row of every batch against :meth:`SyntheticRows.expected`."""
    before_open = process_memory()["RssAnon"]
    start = time.perf_counter()
    cache = TeacherCache(folder, fp16)
    open_s = time.perf_counter() - start
    after_open = process_memory()["RssAnon"]
    descriptors = len(os.listdir("/proc/self/fd"))
    mappings = len(Path("/proc/self/maps").read_text().splitlines())
    order = np.random.default_rng(seed).permutation(n_examples)
    batches = math.ceil(n_examples / batch_size)
    if max_batches is not None:
        batches = min(batches, max_batches)
    lookup_s, examples, verified, batches_read = 0.0, 0, 0, 0
    start = time.perf_counter()
    for b in range(batches):
        indices = order[b * batch_size : (b + 1) * batch_size].tolist()
        batch = [example_of(i, folder / "images") for i in indices]
        t0 = time.perf_counter()
        out = cache.lookup(batch)
        lookup_s += time.perf_counter() - t0
        sampler.sample()  # while the batch's tensors are alive
        j = b % len(indices)
        for teacher, fields in rows.expected(indices[j]).items():
            for field, value in fields.items():
                if not torch.equal(out[teacher][field][j], value):
                    raise RuntimeError(f"row of {uid_of(indices[j])} ({teacher}/{field}) differs from what was written")
        verified += 1
        batches_read += 1
        examples += len(indices)
        del out
        if time.perf_counter() - start > max_seconds:
            break
    read_bytes = examples * rows.bytes_per_example
    return {
        "open_seconds": round(open_s, 2),
        "open_files": descriptors,
        "memory_mappings": mappings,
        "rss_anon_before_open_mib": round(before_open / MIB, 1),
        "rss_anon_after_open_mib": round(after_open / MIB, 1),
        "batch_size": batch_size,
        "batches_read": batches_read,
        "examples_read": examples,
        "full_pass": examples == n_examples,
        "read_gib": round(read_bytes / GIB, 3),
        "read_seconds": round(time.perf_counter() - start, 2),
        "lookup_seconds": round(lookup_s, 2),
        "examples_per_s": round(examples / lookup_s, 1),
        "mb_per_s": round(read_bytes / MIB / lookup_s, 1),
        "verified_rows": verified,
    }


def run(
    folder: Path,
    size_bytes: int,
    *,
    fp16: bool = True,
    rows_per_shard: int = 64,
    batch_size: int = 64,
    max_batches: int | None = None,
    max_seconds: float = 300.0,
    interval: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a synthetic cache of about ``size_bytes`` in ``folder`` (which must exist), then read it
    under a :class:`MemorySampler`; return the summary (sizes in MiB/GiB, memory peaks of the read)."""
    check_disk(folder, size_bytes)
    rows = SyntheticRows(torch.float16 if fp16 else torch.float32, rows_per_shard, seed)
    n_examples = max(1, size_bytes // rows.bytes_per_example)
    write = write_cache(folder, n_examples, rows, fp16)
    evict_from_page_cache(folder)
    hwm_reset = reset_peak_rss()  # VmHWM then covers the read alone, not the writer's buffers
    with MemorySampler(interval) as sampler:
        read = read_cache(
            folder,
            n_examples,
            rows,
            fp16,
            sampler,
            batch_size=batch_size,
            max_batches=max_batches,
            max_seconds=max_seconds,
            seed=seed,
        )
    peaks = sampler.peaks()
    cache_bytes = write["bytes_on_disk"]
    return {
        "cache": {
            "folder": str(folder),
            "dtype": "float16" if fp16 else "float32",
            "fields": FIELDS,
            "bytes_per_example": rows.bytes_per_example,
            "rows_per_shard": rows_per_shard,
            "size_gib": round(cache_bytes / GIB, 3),
            "size_over_ram": round(cache_bytes / meminfo_bytes("MemTotal"), 3),
        },
        "write": write,
        "read": read,
        "memory": {
            **{f"peak_{name.lower()}_mib": round(value / MIB, 1) for name, value in peaks.items()},
            "peak_rss_anon_over_cache": round(peaks["RssAnon"] / cache_bytes, 5),
            "samples": len(sampler.samples),
            "interval_s": interval,
            "vm_hwm_reset_before_read": hwm_reset,
        },
        "timeline": sampler.samples,
    }


def machine(folder: Path) -> dict[str, Any]:
    disk = shutil.disk_usage(folder)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "mem_total_gib": round(meminfo_bytes("MemTotal") / GIB, 2),
        "disk_total_gib": round(disk.total / GIB, 1),
        "disk_free_gib_before": round(disk.free / GIB, 1),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-gb", type=float, help="cache size in GiB (default: 1.25 x MemTotal)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where to create the cache's folder (default: the temp folder)",
    )
    parser.add_argument("--json", type=Path, help="also write the summary and the memory timeline here")
    parser.add_argument("--keep", action="store_true", help="keep the cache (its folder is printed)")
    parser.add_argument("--fp32", action="store_true", help="store float32 targets (default: float16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, help="batches to read (default: one full pass)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop reading after this long")
    parser.add_argument("--rows-per-shard", type=int, default=64)
    args = parser.parse_args(argv)
    size = int(args.size_gb * GIB) if args.size_gb is not None else int(1.25 * meminfo_bytes("MemTotal"))
    args.dir.mkdir(parents=True, exist_ok=True)
    check_disk(args.dir, size)  # before anything is created
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    info = machine(args.dir)
    folder = Path(tempfile.mkdtemp(prefix="vldistill-cache-memory-", dir=args.dir))
    try:
        result = run(
            folder,
            size,
            fp16=not args.fp32,
            rows_per_shard=args.rows_per_shard,
            batch_size=args.batch_size,
            max_batches=args.batches,
            max_seconds=args.max_seconds,
        )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    result = {
        "command": " ".join(["python bench/cache_memory.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": started,
        "machine": info,
        "kept": args.keep,
        **result,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=1))
    return result


if __name__ == "__main__":
    main()
