"""Datasets and batches: examples + their images -> what a training step consumes.

Images are decoded once and kept in memory (the generated world and the low-shot subsets are small;
for real datasets the cache is bounded). A batch keeps the decoded images so that live teachers can
apply their own preprocessing to the very same example as the student.

Before training or evaluation :func:`examples_with_images` checks the examples' images, so that a
bad image is met before the first step rather than in the middle of an epoch: a missing one always
(a cheap ``stat``), an unreadable one too with ``data.skip_bad`` (every image is decoded once, in
threads), and those examples are dropped and listed once.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from vldistill.data.examples import TaskExample
from vldistill.errors import DataError, VldistillError
from vldistill.models.heads import task_targets
from vldistill.models.outputs import ModelInputs

SKIP_FIX = "set data.skip_bad: true to drop the examples whose images are missing or unreadable"


class ImageReadError(DataError):
    """An image that cannot be decoded: ``<path>: cannot read image (<why>); fix: ...``, one line.

    A DataLoader worker's exception reaches the main process re-built by torch as ``cls(text)``, where
    ``text`` is the worker's whole traceback; the one-argument form keeps only its last line, the
    original message, so the command line still prints one line.
    """

    def __init__(self, path: str | Path, problem: str | None = None) -> None:
        if problem is not None:
            super().__init__(path, None, f"cannot read image ({problem})", f"replace the file, or {SKIP_FIX}")
            return
        last = str(path).rstrip().splitlines()[-1]
        marker = f"{type(self).__name__}: "
        message = last.split(marker, 1)[1] if marker in last else last
        self.file, self.record, self.problem, self.fix = "", None, message, ""
        VldistillError.__init__(self, message)


def decode_image(path: Path) -> Image.Image:
    """The image at ``path`` as RGB. Raises ``ImageReadError`` (one line) if it is missing or unreadable."""
    try:
        with Image.open(path) as raw:
            return raw.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(path, str(err)) from None


def _missing(path: Path) -> tuple[str, str] | None:
    return None if path.is_file() else ("image not found", "")


def examples_with_images(
    examples: Sequence[TaskExample], *, skip_bad: bool, where: str, report: bool = True
) -> list[TaskExample]:
    """``examples`` whose images all exist (and, with ``skip_bad``, decode); the others dropped and listed.

    Without ``skip_bad`` only existence is checked (decoding every image up front would cost as much
    as an epoch on a real dataset); an unreadable image then fails when it is first decoded, with
    ``ImageReadError``. With ``skip_bad`` each distinct image gets ``vldistill data check``'s test
    (exists, decodes, is no decompression bomb; threads, as decoding releases the GIL) and the dropped
    examples are reported on stderr, once (``report``).

    Raises:
        DataError: without ``skip_bad``, a missing image (naming it, an example using it and the fix).
    """
    from vldistill.data.check import _image_problem

    paths = list(dict.fromkeys(p for ex in examples for p in ex.images))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = pool.map(_image_problem if skip_bad else _missing, paths)
        bad = {p: problem[0] for p, problem in zip(paths, found, strict=True) if problem is not None}
    if not bad:
        return list(examples)
    if not skip_bad:
        first = next(ex for ex in examples if any(p in bad for p in ex.images))
        path = next(p for p in first.images if p in bad)
        others = f" (and {len(bad) - 1} other image(s))" if len(bad) > 1 else ""
        raise DataError(
            path, f"image of example {first.uid} ({where})", bad[path] + others, f"restore it, or {SKIP_FIX}"
        )
    kept = [ex for ex in examples if not any(p in bad for p in ex.images)]
    if report:
        print(f"warning: skipped {len(examples) - len(kept)} example(s) of {where} for bad images:", file=sys.stderr)
        for path, problem in list(bad.items())[:20]:
            print(f"  {path}: {problem}", file=sys.stderr)
        if len(bad) > 20:
            print(f"  ... and {len(bad) - 20} more image(s)", file=sys.stderr)
    return kept


class ImageStore:
    """Decodes images to RGB once and keeps up to ``capacity`` of them (least recently used out)."""

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._images: OrderedDict[Path, Image.Image] = OrderedDict()

    def __call__(self, path: Path) -> Image.Image:
        img = self._images.get(path)
        if img is not None:
            self._images.move_to_end(path)
            return img
        img = decode_image(path)
        self._images[path] = img
        if len(self._images) > self.capacity:
            self._images.popitem(last=False)
        return img


@dataclass
class Batch:
    """One batch.

    Attributes:
        index: ``(B,)`` positions of the examples in their dataset (teacher-cache rows).
        examples: the ``B`` task examples.
        images: per example its 1 or 2 decoded images.
        student: the student's inputs (its own processor).
        targets: ``(B,)`` long labels, or ``(B, A)`` float VQA soft scores.
    """

    index: torch.Tensor
    examples: list[TaskExample]
    images: list[list[Image.Image]]
    student: ModelInputs
    targets: torch.Tensor

    @property
    def task(self) -> str:
        return self.student.task


class ExampleDataset(torch.utils.data.Dataset):
    """Examples of one task with their decoded images."""

    def __init__(self, examples: Sequence[TaskExample], store: ImageStore | None = None) -> None:
        self.examples = list(examples)
        self.store = store or ImageStore()

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[int, TaskExample, list[Image.Image]]:
        ex = self.examples[i]
        return i, ex, [self.store(p) for p in ex.images]


def collate_fn(
    processor: Callable[[Sequence[TaskExample], Sequence[Sequence[Image.Image]]], ModelInputs],
    task: str,
    answers: Sequence[str] | None,
) -> Callable[[list[tuple[int, TaskExample, list[Image.Image]]]], Batch]:
    """A DataLoader ``collate_fn`` that runs the student's processor and builds the targets."""

    def collate(items: list[tuple[int, TaskExample, list[Image.Image]]]) -> Batch:
        index = torch.tensor([i for i, _, _ in items], dtype=torch.long)
        examples = [ex for _, ex, _ in items]
        images = [imgs for _, _, imgs in items]
        return Batch(index, examples, images, processor(examples, images), task_targets(examples, answers))

    return collate
