"""Rows of the teacher cache on disk: safetensors shards, their storage dtypes, and a keyed store of rows.

A shard holds rows of one store (images, texts or examples): tensor ``<teacher>/<field>`` ``(N, ...)``
and the rows' keys in the file's metadata (``keys``, a JSON list). Shards are written once, atomically
(``os.replace``), and never changed.

**Storage dtypes** (``cache.fp16`` / ``cache.int8``) apply to the large fields only, those whose row
has two or more dimensions (token features ``(P, D)``, word features ``(W, D)``, attention maps
``(V, H, L, P)``): ``float16``, or ``int8`` with one scale per token (absmax quantisation: ``q =
round(127 x / max|x|)`` over the last dimension, stored with ``max|x| / 127`` as ``<name>@scale``
float32, as LLM.int8() quantises per vector, Dettmers et al. 2022, arXiv 2208.07339). Vectors per row
(embeddings, logits, candidate scores) stay float32: a few KiB per row, and the confidence weights
computed from candidate scores keep full precision. Integer and bool fields are stored as they are.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from vldistill.errors import ConfigError, DataError

SCALE = "@scale"
STORAGES = ("float32", "float16", "int8")
_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "BOOL": np.bool_,
    "I32": np.int32,
    "I8": np.int8,
}
_FLOAT16_MAX = 65504.0


def encode(name: str, rows: torch.Tensor, storage: str) -> dict[str, torch.Tensor]:
    """The stored tensors of one field's ``rows`` ``(N, ...)`` in ``storage`` (see the module docstring).

    Raises:
        ConfigError: ``float16`` storage of values beyond float16's range (they would become inf).
    """
    rows = rows.detach().cpu()
    if not rows.is_floating_point():
        return {name: rows.contiguous()}
    if rows.dim() < 3 or storage == "float32":
        return {name: rows.float().contiguous()}
    if storage == "float16":
        peak = float(rows.abs().max()) if rows.numel() else 0.0
        if peak > _FLOAT16_MAX:
            raise ConfigError(
                f"teacher cache: {name} holds values up to {peak:.3g}, beyond float16's range; "
                "fix: set cache.fp16: false, or cache.int8: true (scaled per token)"
            )
        return {name: rows.half().contiguous()}
    rows = rows.float()
    scale = rows.abs().amax(dim=-1, keepdim=True) / 127.0
    q = (rows / scale.clamp_min(torch.finfo(torch.float32).tiny)).round().clamp(-127, 127).to(torch.int8)
    return {name: q.contiguous(), name + SCALE: scale.squeeze(-1).contiguous()}


def decode(
    arrays: dict[str, np.ndarray], device: torch.device | str, distributions: frozenset[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """Stored arrays (name -> ``(N, ...)``, as read) -> the fields as float32 / bool / long tensors on ``device``.

    A field named in ``distributions`` (``<teacher>/<field>``'s field part) holds probability rows over
    its last dimension; stored in float16 or int8, each row is rescaled to its original sum of 1 (rows
    of zeros stay zero): rounding moves a little mass, and a KL divergence against near-uniform rows
    feels mostly that (measured on DiDE's attention: ``bench/cache_size.py``).
    """
    out: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        if name.endswith(SCALE):
            continue
        t = torch.from_numpy(array).to(device)
        rounded = name + SCALE in arrays or t.dtype == torch.float16
        if name + SCALE in arrays:
            t = t.float() * torch.from_numpy(arrays[name + SCALE]).to(device).unsqueeze(-1)
        elif t.dtype == torch.float16:
            t = t.float()
        if rounded and name.split("/", 1)[-1] in distributions:
            total = t.sum(dim=-1, keepdim=True)
            t = torch.where(total > 0, t / total.clamp(min=torch.finfo(t.dtype).tiny), t)
        out[name] = t
    return out


def write_shard(path: Path, keys: Sequence[str], tensors: dict[str, torch.Tensor]) -> None:
    """Write one shard atomically: ``tensors`` (already encoded) and the rows' ``keys``."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"keys": json.dumps(list(keys))})
    os.replace(tmp, path)


def _unreadable(path: Path, err: Exception) -> DataError:
    return DataError(
        path,
        None,
        f"unreadable cache shard ({err})",
        "delete the cache folder (or run `vldistill cache build`) to rebuild it",
    )


class Shard:
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
                    raise ValueError(f"header length {length} runs past the end of the file: truncated")
                header = json.loads(f.read(length))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            meta = header.pop("__metadata__", {})
            self.keys: list[str] = json.loads(meta.get("keys", "[]"))
            if not isinstance(self.keys, list):
                raise ValueError("its keys are not a list")
            entries = [
                (name, info["data_offsets"], info["dtype"], tuple(info["shape"])) for name, info in header.items()
            ]
        except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError) as err:
            raise _unreadable(path, err) from err
        base = 8 + length
        self.arrays: dict[str, np.ndarray] = {}
        if not entries:  # a shard of keys only (rows without per-row tensors): nothing to map
            return
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


class RowStore:
    """The rows of one kind (images, texts or examples) over its shards, looked up by key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.shards: list[Shard] = []
        self.rows: dict[str, tuple[int, int]] = {}

    def add(self, shard: Shard) -> None:
        index = len(self.shards)
        self.shards.append(shard)
        for row, key in enumerate(shard.keys):
            self.rows[key] = (index, row)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def gather(
        self, keys: Sequence[str], folder: Path, what: str, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Stored arrays of ``keys`` in order, name -> ``(len(keys), ...)``: one fancy-indexed read per shard.

        ``names``: only these tensors (and their ``@scale``), e.g. the embeddings without the tokens.

        Raises:
            DataError: a key that is not stored (``what`` names the row in the message).
        """
        try:
            where = [self.rows[k] for k in keys]
        except KeyError as err:
            raise DataError(
                folder,
                f"{what} {err.args[0]}",
                f"row missing from the teacher cache ({self.name})",
                "run `vldistill cache build` with this config",
            ) from None
        if not where:
            return {}
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for position, (shard, row) in enumerate(where):
            positions, rows = groups.setdefault(shard, ([], []))
            positions.append(position)
            rows.append(row)
        out: dict[str, np.ndarray] = {}
        first = self.shards[where[0][0]].arrays
        for name, array in first.items():
            if names is not None and name.split(SCALE)[0] not in names:
                continue
            values = np.empty((len(where), *array.shape[1:]), dtype=array.dtype)
            for shard, (positions, rows) in groups.items():
                values[positions] = self.shards[shard].arrays[name][rows]
            out[name] = values
        return out
