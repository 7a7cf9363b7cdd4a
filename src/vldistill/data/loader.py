"""Datasets and batches: examples + their images -> what a training step consumes.

Images are decoded once and kept in memory (the generated world and the low-shot subsets are small;
for real datasets the cache is bounded). A batch keeps the decoded images so that live teachers can
apply their own preprocessing to the very same example as the student.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from vldistill.data.examples import TaskExample
from vldistill.errors import DataError
from vldistill.models.heads import task_targets
from vldistill.models.outputs import ModelInputs


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
        try:
            with Image.open(path) as raw:
                img = raw.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(
                path, None, f"cannot read image ({err})", "replace the file or run `vldistill data check`"
            ) from err
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
