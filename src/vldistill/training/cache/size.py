"""A teacher cache's size on disk, measured per stored row and projected to a whole training split."""

from __future__ import annotations

from vldistill.data.split_sizes import SplitSize
from vldistill.training.cache.keys import HASHES
from vldistill.training.cache.teacher_cache import DERIVED, STORES, TeacherCache


def store_sizes(cache: TeacherCache) -> dict[str, dict[str, float]]:
    """Per store (``images``, ``texts``, ``examples``): ``rows``, ``bytes`` on disk (whole shard files,
    headers included) and ``bytes_per_row`` (0 for an empty store)."""
    out: dict[str, dict[str, float]] = {}
    for name in STORES:
        shards = cache.stores[name].shards
        rows = sum(len(shard.keys) for shard in shards)
        size = sum(shard.path.stat().st_size for shard in shards)
        out[name] = {"rows": rows, "bytes": size, "bytes_per_row": size / rows if rows else 0.0}
    return out


def projected_bytes(cache: TeacherCache, split: SplitSize) -> int:
    """Bytes the cache would take on disk for the whole ``split``, from the rows it holds now.

    Each store's bytes per row times the split's distinct images, distinct texts and examples, plus the
    image-digest memo (``image-hashes.json``, per image) and the derived fields' maps (once). Exact
    when the cache holds the whole split (its rows are fixed-shape); a projection from a sample
    otherwise. ``meta.json`` (a few KiB) is left out.
    """
    sizes = store_sizes(cache)
    total = (
        sizes["images"]["bytes_per_row"] * split.images
        + sizes["texts"]["bytes_per_row"] * split.texts
        + sizes["examples"]["bytes_per_row"] * split.examples
    )
    memo = cache.folder / HASHES
    if memo.is_file() and sizes["images"]["rows"]:
        total += memo.stat().st_size / sizes["images"]["rows"] * split.images
    derived = cache.folder / DERIVED
    if derived.is_file():
        total += derived.stat().st_size
    return round(total)
