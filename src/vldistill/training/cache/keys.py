"""Content keys of the teacher cache's rows: an image by its file's bytes, a text by its string.

Within one cache folder (whose key fixes the teachers, their processors and the target settings), a
per-image target depends on the image's bytes alone and a per-text target on the string alone, so
rows are keyed by their sha256. An example's row (its pair targets) is keyed by its uid, task, its
images' keys, texts and candidates: a changed image file or text gives new keys, never a stale row.

Hashing every image of a split at each start would read it all (13 GB for COCO train2014), so the
digest of each file is remembered with its ``(size, mtime_ns, ctime_ns, inode)`` in
``image-hashes.json`` in the cache folder and reused while they are unchanged (the check ``git`` and
``make`` rely on; ``ctime`` cannot be set back by a user). An image stored in a table (ViLT's Arrow
files, a ``datasets`` split: :class:`~vldistill.data.images.StoredImage`) is keyed by the sha256 of its
cell's encoded bytes, remembered for the process (one cell read per image and run).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vldistill.data.examples import TaskExample
from vldistill.data.images import ImageRef, StoredImage, image_bytes
from vldistill.errors import DataError

HASHES = "image-hashes.json"
_KEY_HEX = 32  # 128 bits


@dataclass(frozen=True)
class Refs:
    """The rows an example reads: its images' keys (in order), its texts' keys, its own row's key."""

    images: tuple[str, ...]
    texts: tuple[str, ...]
    example: str


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_KEY_HEX]


def _signature(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class ContentKeys:
    """Keys of images, texts and examples, with the remembered image digests of ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / HASHES
        self.digests: dict[str, list] = {}
        self.stored: dict[StoredImage, str] = {}
        self.changed = False
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                loaded = {}  # only a memo: an unreadable one is recomputed
            if isinstance(loaded, dict):
                self.digests = {k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 5}

    def image(self, path: ImageRef) -> str:
        """sha256 of the image's encoded bytes: a file's (remembered while its size, times and inode are
        unchanged) or a table cell's (remembered for the process).

        Raises:
            DataError: the file or the cell cannot be read.
        """
        if isinstance(path, StoredImage):
            if path not in self.stored:
                self.stored[path] = hashlib.sha256(image_bytes(path)).hexdigest()[:_KEY_HEX]
            return self.stored[path]
        name = os.path.abspath(path)
        try:
            stat = os.stat(name)
            known = self.digests.get(name)
            signature = _signature(stat)
            if known is not None and known[:4] == signature:
                return known[4]
            with open(name, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()[:_KEY_HEX]
        except OSError as err:
            raise DataError(
                path, None, f"cannot read the image for the teacher cache ({err})", "restore the file"
            ) from err
        self.digests[name] = [*signature, digest]
        self.changed = True
        return digest

    def refs(self, ex: TaskExample) -> Refs:
        images = tuple(self.image(p) for p in ex.images)
        payload = json.dumps([ex.uid, ex.task, images, list(ex.texts), list(ex.candidates)])
        example = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:_KEY_HEX]
        return Refs(images, tuple(text_key(t) for t in ex.texts), example)

    def save(self) -> None:
        """Write the remembered digests (atomically) if any was added."""
        if not self.changed:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.digests))
        os.replace(tmp, self.path)
        self.changed = False
