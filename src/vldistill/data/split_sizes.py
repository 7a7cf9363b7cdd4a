"""Training-split sizes: counted from the data, or the published figures when the data is not there.

What the teacher cache's size depends on (``vldistill.training.cache.size``): distinct images, distinct
texts and examples. ``vldistill plan --cost`` and ``bench/cache_size.py`` project to the real splits
with :data:`PUBLISHED_TRAIN_SPLITS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vldistill.data.examples import TaskExample


@dataclass(frozen=True)
class SplitSize:
    """A training split's size and where the numbers come from.

    ``examples``: training examples (one example row each in the cache); ``images``: distinct images;
    ``texts``: distinct texts (an upper bound where only the number of texts is published).
    """

    examples: int
    images: int
    texts: int
    source: str


def count_split(examples: Sequence[TaskExample], source: str) -> SplitSize:
    """The size of a loaded split: its examples, its distinct images (by reference) and distinct texts."""
    images = {str(ref) for ex in examples for ref in ex.images}
    texts = {text for ex in examples for text in ex.texts}
    return SplitSize(len(examples), len(images), len(texts), source)


PUBLISHED_TRAIN_SPLITS: dict[str, SplitSize] = {
    "vqa": SplitSize(
        443_757,
        82_783,
        443_757,
        "VQA v2 train2014, published size: 443,757 questions on 82,783 COCO images (visualqa.org/download.html; "
        "Goyal et al., CVPR 2017); texts: every question counted once (an upper bound: questions repeat)",
    ),
    "snli_ve": SplitSize(
        529_527,
        29_783,
        529_527,
        "SNLI-VE train, published size: 529,527 pairs (176,932 + 176,045 + 176,550 by label) on 29,783 Flickr30K "
        "images (github.com/necla-ml/SNLI-VE README; Xie et al., arXiv 1811.10582); texts: every hypothesis "
        "counted once (an upper bound)",
    ),
    "nlvr2": SplitSize(
        86_373,
        103_170,
        86_373,
        "NLVR2 train, published size: 86,373 sentence-image-pair examples (github.com/lil-lab/nlvr; Suhr et al., "
        "ACL 2019); images ~103,170 (an estimate, not verified: at most 2 per example)",
    ),
    "vcr": SplitSize(
        2 * 212_923,
        80_000,
        8 * 212_923,
        "VCR train, published size: 212,923 questions (visualcommonsense.com; Zellers et al., CVPR 2019), two "
        "examples each here (Q->A, QA->R) of 4 candidate texts each; images ~80,000 (an estimate, not "
        "verified: the paper gives 110k movie scenes over all splits)",
    ),
}
