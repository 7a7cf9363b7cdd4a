"""Low-shot subsets for the protocol: stratified, seeded, and saved as manifests.

Users of other toolkits cannot find out which examples a low-shot run used; here every subset is
written beside the run as a manifest of the chosen record ids, and a manifest can be re-applied to
reproduce the run exactly. Sampling is over *records* (a VCR record yields a Q->A and a QA->R example;
both stay together), stratified by the examples' ``group`` (the answer or label).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vldistill.data.examples import TaskExample
from vldistill.errors import DataError

MANIFEST_VERSION = 1


def _records(examples: Sequence[TaskExample]) -> dict[str, list[TaskExample]]:
    units: dict[str, list[TaskExample]] = {}
    for ex in examples:
        units.setdefault(ex.meta.get("record", ex.uid), []).append(ex)
    return units


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over strata proportionally to their sizes (largest remainder, ties by name)."""
    n = sum(sizes.values())
    exact = {g: total * s / n for g, s in sizes.items()}
    alloc = {g: min(sizes[g], math.floor(x)) for g, x in exact.items()}
    order = sorted(sizes, key=lambda g: (-(exact[g] - math.floor(exact[g])), g))
    i = 0
    while sum(alloc.values()) < total and i < 10 * len(order) + 10:
        g = order[i % len(order)]
        if alloc[g] < sizes[g]:
            alloc[g] += 1
        i += 1
    return alloc


def low_shot(
    examples: Sequence[TaskExample],
    *,
    fraction: float | None = None,
    per_group: int | None = None,
    seed: int = 0,
) -> list[TaskExample]:
    """A stratified random subset: a ``fraction`` of the records, or ``per_group`` records per group.

    The group of a record is the ``group`` of its first example. Deterministic for a seed, and
    independent of the input order. Returns examples in their input order.

    Raises:
        ValueError: neither or both of ``fraction`` and ``per_group``, or a fraction outside (0, 1].
    """
    if (fraction is None) == (per_group is None):
        raise ValueError("give exactly one of fraction or per_group")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    units = _records(examples)
    strata: dict[str, list[str]] = {}
    for rid in sorted(units):
        strata.setdefault(units[rid][0].group, []).append(rid)
    if fraction is not None:
        total = max(1, round(fraction * len(units)))
        quota = _allocate({g: len(ids) for g, ids in strata.items()}, total)
    else:
        assert per_group is not None
        quota = {g: min(per_group, len(ids)) for g, ids in strata.items()}
    rng = random.Random(seed)
    chosen: set[str] = set()
    for g in sorted(strata):
        ids = strata[g]
        chosen.update(rng.sample(ids, quota[g]))
    return [ex for ex in examples if ex.meta.get("record", ex.uid) in chosen]


def write_manifest(path: Path, examples: Sequence[TaskExample], **params: Any) -> None:
    """Write the record ids of a subset (and how it was drawn) to ``path`` as JSON, atomically."""
    ids = sorted({ex.meta.get("record", ex.uid) for ex in examples})
    body = {"version": MANIFEST_VERSION, "params": params, "records": len(ids), "ids": ids}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
    tmp.replace(path)


def apply_manifest(path: Path, examples: Sequence[TaskExample]) -> list[TaskExample]:
    """Re-select exactly the records a manifest names; every named record must exist."""
    try:
        body = json.loads(path.read_text())
        ids = body["ids"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(
            path, None, f"not a readable subset manifest ({err})", "rewrite it with write_manifest"
        ) from err
    wanted = set(ids)
    present = {ex.meta.get("record", ex.uid) for ex in examples}
    missing = sorted(wanted - present)
    if missing:
        raise DataError(
            path,
            f"id {missing[0]}",
            f"{len(missing)} record(s) of the manifest are not in the dataset",
            "apply the manifest to the dataset it was drawn from",
        )
    return [ex for ex in examples if ex.meta.get("record", ex.uid) in wanted]
