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

import torch
from PIL import Image, UnidentifiedImageError
from torch.nn.utils.rnn import pad_sequence

from vldistill.data.examples import TaskExample
from vldistill.data.images import ImageRef, image_exists, image_problem, open_rgb
from vldistill.errors import DataError, VldistillError
from vldistill.models.heads import task_targets
from vldistill.models.outputs import ModelInputs
from vldistill.models.processing import Processor, check_batch, word_index_from_offsets

SKIP_FIX = "set data.skip_bad: true to drop the examples whose images are missing or unreadable"


class ImageReadError(DataError):
    """An image that cannot be decoded: ``<path>: cannot read image (<why>); fix: ...``, one line.

    A DataLoader worker's exception reaches the main process re-built by torch as ``cls(text)``, where
    ``text`` is the worker's whole traceback; the one-argument form keeps only its last line, the
    original message, so the command line still prints one line.
    """

    def __init__(self, path: str | ImageRef, problem: str | None = None) -> None:
        if problem is not None:
            super().__init__(path, None, f"cannot read image ({problem})", f"replace the file, or {SKIP_FIX}")
            return
        last = str(path).rstrip().splitlines()[-1]
        marker = f"{type(self).__name__}: "
        message = last.split(marker, 1)[1] if marker in last else last
        self.file, self.record, self.problem, self.fix = "", None, message, ""
        VldistillError.__init__(self, message)


def decode_image(path: ImageRef) -> Image.Image:
    """The image ``path`` names (a file or a stored image) as RGB.

    Raises:
        ImageReadError: missing or unreadable, or a stored image's table or cell unusable (one line, also
            from a DataLoader worker).
    """
    try:
        return open_rgb(path)
    except DataError as err:
        raise ImageReadError(path, err.problem) from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(path, str(err)) from None


def _missing(path: ImageRef) -> tuple[str, str] | None:
    return None if image_exists(path) else ("image not found", "")


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
    paths = list(dict.fromkeys(p for ex in examples for p in ex.images))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = pool.map(image_problem if skip_bad else _missing, paths)
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
        self._images: OrderedDict[ImageRef, Image.Image] = OrderedDict()

    def __call__(self, path: ImageRef) -> Image.Image:
        img = self._images.get(path)
        if img is not None:
            self._images.move_to_end(path)
            return img
        img = decode_image(path)
        self._images[path] = img
        if len(self._images) > self.capacity:
            self._images.popitem(last=False)
        return img


class CachingProcessor:
    """A :class:`Processor` that normalises each image and tokenizes each text once: the same tensors, bit for bit.

    A run evaluates the same pictures and questions again and again (every epoch, every dev evaluation,
    the test splits and their image-shuffled controls); the per-batch work of the processor was about
    a quarter of a step of the demo's student (``bench/step_profile.py``). Kept per instance, i.e. per
    processor and run:

    - images: the normalised pixels of each image *path* (``examples[b].images[k]`` names
      ``images[b][k]``), ``float32`` in ``(height, width, 3)`` order (the processor's own memory
      layout, so that a batch has the very strides the processor gives it), least recently used out
      beyond ``max_image_bytes`` (48 KiB an image at 64 px; 1.7 MiB at 384 px);
    - texts: the unpadded token ids and word indices of each text, least recently used out beyond
      ``max_texts``; a batch is padded to its longest text on the tokenizer's ``padding_side`` with its
      ``pad_token_id``, as the tokenizer pads (a tokenizer without a pad token is called per batch).
    """

    def __init__(self, processor: Processor, *, max_image_bytes: int = 1 << 30, max_texts: int = 500_000) -> None:
        self.processor = processor
        self.max_image_bytes, self.max_texts = max_image_bytes, max_texts
        self._pixels: OrderedDict[ImageRef, torch.Tensor] = OrderedDict()
        self._pixel_bytes = 0
        self._texts: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __call__(self, examples: Sequence[TaskExample], images: Sequence[Sequence[Image.Image]]) -> ModelInputs:
        """As :meth:`Processor.__call__`; ``images[b]`` must be the images at ``examples[b].images``."""
        n_images, n_texts = check_batch(examples, images)
        resized = [
            self._normalized(path, im)
            for ex, ims in zip(examples, images, strict=True)
            for path, im in zip(ex.images, ims, strict=True)
        ]
        pixel_values = torch.stack(resized).permute(0, 3, 1, 2)
        input_ids, attention_mask, word_index = self.tokenize([t for ex in examples for t in ex.texts])
        return ModelInputs(pixel_values, input_ids, attention_mask, word_index, n_images, n_texts, examples[0].task)

    def _normalized(self, path: ImageRef, image: Image.Image) -> torch.Tensor:
        """``(height, width, 3)`` float32: the image as :meth:`Processor.images_to_tensor` normalises it."""
        pixels = self._pixels.get(path)
        if pixels is not None:
            self._pixels.move_to_end(path)
            return pixels
        pixels = self.processor.images_to_tensor([image])[0].permute(1, 2, 0)
        self._pixels[path] = pixels
        self._pixel_bytes += pixels.nbytes
        while self._pixel_bytes > self.max_image_bytes and len(self._pixels) > 1:
            self._pixel_bytes -= self._pixels.popitem(last=False)[1].nbytes
        return pixels

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`Processor.tokenize`: ``input_ids``, ``attention_mask``, ``word_index``, each ``(N, L)``."""
        tokenizer = self.processor.tokenizer
        if tokenizer.pad_token_id is None:
            return self.processor.tokenize(texts)
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for text in dict.fromkeys(texts):
            hit = self._texts.get(text)
            if hit is not None:
                self._texts.move_to_end(text)
                found[text] = hit
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            found.update(self._encode(missing))
        encoded = [found[t] for t in texts]
        side = tokenizer.padding_side

        def pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
            return pad_sequence(rows, batch_first=True, padding_value=value, padding_side=side)

        input_ids = pad([ids for ids, _ in encoded], tokenizer.pad_token_id)
        attention_mask = pad([torch.ones_like(ids) for ids, _ in encoded], 0)
        return input_ids, attention_mask, pad([words for _, words in encoded], -1)

    def _encode(self, texts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Unpadded token ids and word indices of ``texts``, kept (least recently used out beyond ``max_texts``)."""
        processor = self.processor
        cased = [t.lower() for t in texts] if processor.lowercase else texts
        enc = processor.tokenizer(
            cased, padding=False, truncation=True, max_length=processor.max_length, return_offsets_mapping=True
        )
        fresh = {}
        for text, lowered, ids, offsets in zip(texts, cased, enc["input_ids"], enc["offset_mapping"], strict=True):
            words = word_index_from_offsets(lowered, offsets)
            fresh[text] = (torch.tensor(ids, dtype=torch.long), torch.tensor(words, dtype=torch.long))
        self._texts.update(fresh)
        while len(self._texts) > self.max_texts:
            self._texts.popitem(last=False)
        return fresh


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
