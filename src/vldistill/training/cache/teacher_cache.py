"""An open teacher cache: its three row stores, the derived fields, and the per-example lookup."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vldistill.data.examples import TaskExample
from vldistill.distill.targets import DISTRIBUTION_FIELDS, derive
from vldistill.errors import DataError
from vldistill.training.cache.keys import ContentKeys, Refs
from vldistill.training.cache.shards import RowStore, Shard, decode, encode, write_shard

FORMAT = 2
"""Storage format of a cache folder; part of its key. 1: one row per example (vldistill before 2026-12); 2: rows
per image, per text and per example, content-keyed, derived fields not stored."""
META = "meta.json"
DERIVED = "derived.safetensors"
STORES = {"images": "shard-img-", "texts": "shard-txt-", "examples": "shard-ex-"}


def storage_of(fp16: bool, int8: bool = False) -> str:
    """The storage dtype of the large fields (``cache.int8`` wins over ``cache.fp16``)."""
    return "int8" if int8 else "float16" if fp16 else "float32"


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one: each shard of an open cache holds a descriptor."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit as it is
        return


def _index_error(path: Path, problem: str) -> DataError:
    return DataError(path, None, f"unreadable cache index ({problem})", "delete the cache folder")


class TeacherCache:
    """Targets of a method's teachers, stored per image, per text and per example, looked up per example.

    ``fp16`` / ``int8`` choose how :meth:`write` stores the large fields (``shards.encode``); reading
    needs neither (each shard says its dtypes). ``rows``: the examples stored (key -> shard, row).
    """

    def __init__(self, folder: Path, fp16: bool = False, *, int8: bool = False) -> None:
        _raise_open_file_limit()
        self.folder = folder
        self.storage = storage_of(fp16, int8)
        self.keys = ContentKeys(folder)
        self.stores: dict[str, RowStore] = {}
        self.derived: dict[str, dict[str, tuple[str, torch.Tensor, torch.Tensor | None]]] = {}
        self.computed = 0
        """Example rows the last ``ensure_cache`` on this object computed (0: all were found)."""
        self.reload()

    @property
    def rows(self) -> dict[str, tuple[int, int]]:
        return self.stores["examples"].rows

    @property
    def shards(self) -> list[Shard]:
        return [s for store in self.stores.values() for s in store.shards]

    def reload(self) -> None:
        """Read ``meta.json`` (the published shards of each store) and the derived fields' maps."""
        self.stores = {name: RowStore(name) for name in STORES}
        self.derived = {}
        meta_path = self.folder / META
        if not meta_path.is_file():
            return
        try:
            meta = json.loads(meta_path.read_text())
            listed = meta["shards"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise _index_error(meta_path, str(err)) from err
        groups = listed if isinstance(listed, dict) else {"?": listed}
        for names in groups.values():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _index_error(meta_path, "'shards' is not a list of file names")
            for name in names:
                if Path(name).name != name or not name.startswith("shard-"):
                    raise _index_error(meta_path, f"shard {name!r} points outside the cache folder")
        if meta.get("format") != FORMAT or set(groups) - set(STORES):
            raise DataError(
                meta_path,
                None,
                f"a teacher cache of storage format {meta.get('format', 1)}, this vldistill reads format {FORMAT}",
                "delete this cache folder (a current cache lives under another key and is never mixed with it)",
            )
        for store, names in groups.items():
            for name in names:
                self.stores[store].add(Shard(self.folder / name))
        if (self.folder / DERIVED).is_file():
            self._load_derived(self.folder / DERIVED)

    def _load_derived(self, path: Path) -> None:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                sources = json.loads((f.metadata() or {})["sources"])
            tensors = load_file(str(path))
            for name, source in sources.items():
                teacher, field = name.split("/", 1)
                bias = tensors.get(f"{name}/bias")
                self.derived.setdefault(teacher, {})[field] = (source, tensors[f"{name}/weight"], bias)
        except (OSError, KeyError, ValueError, TypeError, AttributeError) as err:
            raise DataError(path, None, f"unreadable derived-field maps ({err})", "delete the cache folder") from err

    def refs(self, ex: TaskExample) -> Refs:
        return self.keys.refs(ex)

    def missing(self, examples: Sequence[TaskExample]) -> list[TaskExample]:
        """The examples without a stored row (a row is published only once its images' and texts' are)."""
        return [ex for ex in examples if self.refs(ex).example not in self.stores["examples"]]

    def lookup(
        self, examples: Sequence[TaskExample], device: torch.device | str = "cpu"
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Targets of ``examples`` (teacher -> field -> ``(B, ...)``), as the live teacher returns them.

        Per-image rows come back as ``(B, I, ...)``, per-text rows as ``(B, T, ...)``, per-example
        rows as ``(B, ...)``; derived fields are computed on ``device`` from their sources.

        Raises:
            DataError: an example (or one of its images or texts) that the cache does not hold.
        """
        if not examples:
            return {}
        refs = [self.refs(ex) for ex in examples]
        b, n_images, n_texts = len(examples), len(refs[0].images), len(refs[0].texts)
        if any((len(r.images), len(r.texts)) != (n_images, n_texts) for r in refs):
            raise ValueError("a batch needs the same number of images and of texts in every example")
        out: dict[str, dict[str, torch.Tensor]] = {}
        parts = [
            ("images", [k for r in refs for k in r.images], (b, n_images), "image"),
            ("texts", [k for r in refs for k in r.texts], (b, n_texts), "text"),
            ("examples", [r.example for r in refs], (b,), "example"),
        ]
        for store, keys, lead, what in parts:
            if store != "examples" and not len(self.stores[store]):
                continue  # nothing of this kind is cached (e.g. a fusion teacher alone)
            rows = self.stores[store]
            per_example = len(keys) // b
            for i, key in enumerate(keys):
                if key not in rows:
                    raise DataError(
                        self.folder,
                        f"uid {examples[i // per_example].uid}",
                        f"{what} missing from the teacher cache",
                        "run `vldistill cache build` with this config",
                    )
            arrays = rows.gather(keys, self.folder, what)
            for name, value in decode(arrays, device, DISTRIBUTION_FIELDS).items():
                teacher, field = name.split("/", 1)
                value = value.reshape(*lead, *value.shape[1:])
                if store == "images" and field == "image_grid":
                    value = value[:, 0]  # the same grid for every image of an example
                out.setdefault(teacher, {})[field] = value
        for teacher, fields in self.derived.items():
            for field, (source, weight, bias) in fields.items():
                if teacher in out and source in out[teacher]:
                    out[teacher][field] = derive(out[teacher][source], weight, bias)
        return out

    def image_field(self, examples: Sequence[TaskExample], name: str) -> torch.Tensor:
        """``(B, I, ...)``: the stored per-image tensor ``name`` (``<teacher>/<field>``) of the examples' images."""
        keys = [k for ex in examples for k in self.refs(ex).images]
        arrays = self.stores["images"].gather(keys, self.folder, "image", names=[name])
        value = decode(arrays, "cpu")[name]
        return value.reshape(len(examples), len(keys) // len(examples), *value.shape[1:])

    def write(
        self, store: str, tag: str, keys: Sequence[str], targets: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> None:
        """Store rows: ``targets`` teacher -> field -> ``(len(keys), ...)`` into shard ``<store prefix><tag>``."""
        tensors: dict[str, torch.Tensor] = {}
        for teacher, fields in targets.items():
            for field, value in fields.items():
                if value.shape[0] != len(keys):
                    raise ValueError(f"{teacher}/{field} has {value.shape[0]} rows for {len(keys)} keys")
                tensors.update(encode(f"{teacher}/{field}", value, self.storage))
        write_shard(self.folder / f"{STORES[store]}{tag}.safetensors", keys, tensors)

    def publish(
        self, key_parts: dict[str, Any], derived: Mapping[str, Mapping[str, tuple[str, Any]]] | None = None
    ) -> None:
        """List every shard in ``meta.json`` (atomically), store the derived fields' maps once, then reload.

        ``derived``: teacher -> field -> ``(source field, torch.nn.Linear)`` (``TargetParts.derived``).
        """
        if derived and not (self.folder / DERIVED).is_file():
            tensors, sources = {}, {}
            for teacher, fields in derived.items():
                for field, (source, linear) in fields.items():
                    sources[f"{teacher}/{field}"] = source
                    tensors[f"{teacher}/{field}/weight"] = linear.weight.detach().float().cpu().contiguous()
                    if linear.bias is not None:
                        tensors[f"{teacher}/{field}/bias"] = linear.bias.detach().float().cpu().contiguous()
            if tensors:
                tmp = self.folder / f".{DERIVED}.tmp"
                save_file(tensors, str(tmp), metadata={"sources": json.dumps(sources)})
                os.replace(tmp, self.folder / DERIVED)
        shards = {
            store: sorted(p.name for p in self.folder.glob(f"{prefix}*.safetensors"))
            for store, prefix in STORES.items()
        }
        tmp = self.folder / f".{META}.tmp"
        tmp.write_text(json.dumps({"format": FORMAT, "key": key_parts, "shards": shards}, indent=1))
        os.replace(tmp, self.folder / META)
        self.keys.save()
        self.reload()
