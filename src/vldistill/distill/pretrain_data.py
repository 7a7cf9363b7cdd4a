"""Image-caption pairs for DiDE's pre-training stage (:mod:`vldistill.distill.pretrain`).

A captions file is JSON lines, ``{"image": "<path>", "caption": "..."}``, the image path relative to
the file's folder (absolute paths work too): the generated world's ``<style>/captions/captions.jsonl``,
or real captions (COCO, CC) converted to that format. A batch of ``B`` pairs becomes ``B`` images, each
with its own caption and ``negatives`` captions of other images, in the ``vcr`` layout (one image,
``1 + negatives`` candidate texts, the own caption first).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from vldistill.data.examples import TaskExample
from vldistill.errors import ConfigError, DataError
from vldistill.models.outputs import ModelInputs
from vldistill.models.processing import Processor

ITM_TASK = "vcr"  # the task whose layout and head (one rank logit per view) serve image-text matching


class CaptionDataConfig(BaseModel):
    """Image-caption pairs: ``captions: world`` (the generated world's, of ``styles``) or a captions.jsonl
    (or the folder holding one); ``max_pairs``: a seeded random subset."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    captions: str = "world"
    """``world`` (the generated world's captions) or a captions.jsonl, or the folder holding one."""
    styles: list[Literal["base", "shifted"]] = Field(default_factory=lambda: ["base", "shifted"], min_length=1)
    """``captions: world``: the styles whose captions are used."""
    world_scale: float = Field(1.0, gt=0)
    """``captions: world``: the generated world's scale (as ``data.world_scale``)."""
    world_seed: int = Field(0, ge=0)
    """``captions: world``: which draw of the world (as ``data.world_seed``)."""
    max_pairs: int | None = Field(None, ge=2)
    """Use a random subset of this many pairs (seeded by ``train.seed``)."""


@dataclass(frozen=True)
class CaptionPair:
    """One image-caption pair; ``source`` is the jsonl it came from and ``line`` its line (errors)."""

    image: Path
    caption: str
    source: Path
    line: int


def read_caption_file(path: Path) -> list[CaptionPair]:
    """The pairs of a captions.jsonl (see the module docstring for the format)."""
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"line {n}", f"not JSON ({err.msg})", "write one JSON object per line") from err
        if not (
            isinstance(row, dict)
            and isinstance(row.get("image"), str)
            and isinstance(row.get("caption"), str)
            and row["caption"].strip()
        ):
            raise DataError(
                path,
                f"line {n}",
                "needs a string 'image' and a non-empty string 'caption'",
                'write {"image": "images/<n>.jpg", "caption": "..."}',
            )
        pairs.append(CaptionPair(path.parent / row["image"], row["caption"], path, n))
    return pairs


def caption_pairs(cfg: CaptionDataConfig, seed: int) -> list[CaptionPair]:
    """Every pair the data section names (the world is generated on first use), in file order."""
    if cfg.captions == "world":
        from vldistill.training.experiment import resolve_root

        files = [
            resolve_root("world", s, "captions", cfg.world_scale, cfg.world_seed) / "captions.jsonl" for s in cfg.styles
        ]
    else:
        path = Path(cfg.captions).expanduser()
        files = [path / "captions.jsonl" if path.is_dir() else path]
        if not files[0].is_file():
            raise ConfigError(
                f"data.captions '{cfg.captions}': no captions.jsonl there; "
                "fix: give a captions.jsonl, the folder holding one, or 'world'"
            )
    pairs = [p for f in files for p in read_caption_file(f)]
    if cfg.max_pairs is not None and cfg.max_pairs < len(pairs):
        keep = np.sort(np.random.default_rng(seed).permutation(len(pairs))[: cfg.max_pairs])
        pairs = [pairs[int(i)] for i in keep]
    return pairs


def negative_partners(image_ids: Sequence[str], negatives: int) -> torch.Tensor:
    """``(B, negatives)`` long: for each pair, the batch positions whose captions serve as its negatives.

    Walking forward from each position (wrapping around), the first ``negatives`` pairs of another
    image. ``["a", "a", "b", "c"]``, 1 -> ``[[2], [2], [3], [0]]``.

    Raises:
        ConfigError: some image has fewer than ``negatives`` pairs of other images in its batch.
    """
    b = len(image_ids)
    rows = []
    for i in range(b):
        others = [(i + k) % b for k in range(1, b) if image_ids[(i + k) % b] != image_ids[i]]
        if len(others) < negatives:
            raise ConfigError(
                f"a batch of {b} pairs has {len(others)} captions of other images for "
                f"{image_ids[i]}, {negatives} needed; fix: raise train.batch_size or lower "
                "loss.negatives"
            )
        rows.append(others[:negatives])
    return torch.tensor(rows, dtype=torch.long)


def _decode(pair: CaptionPair) -> Image.Image:
    try:
        with Image.open(pair.image) as raw:
            return raw.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(
            pair.source,
            f"line {pair.line}",
            f"cannot read image {pair.image} ({err})",
            "fix the path (relative to the jsonl's folder) or the file",
        ) from err


@dataclass
class PairBatch:
    """A batch as both models see it: ``B`` images, each with ``1 + n`` texts (own caption first).

    Attributes:
        student, teacher: ``ModelInputs`` of task ``vcr`` (``pixel_values`` ``(B, 3, h, w)``,
            ``input_ids`` ``(B * (1 + n), L)``), each by its model's processor.
        partners: ``(B, n)`` batch positions of the pairs whose captions are the negatives.
    """

    student: ModelInputs
    teacher: ModelInputs
    partners: torch.Tensor

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.student.to(device), self.teacher.to(device), self.partners)


class PairCollator:
    """Decodes and processes a list of ``CaptionPair`` into a :class:`PairBatch`."""

    def __init__(self, student: Processor, teacher: Processor, negatives: int) -> None:
        self.student, self.teacher, self.negatives = student, teacher, negatives

    def __call__(self, pairs: Sequence[CaptionPair]) -> PairBatch:
        partners = negative_partners([str(p.image) for p in pairs], self.negatives)
        examples = [
            TaskExample(str(p.image), ITM_TASK, (p.image,), (p.caption, *(pairs[j].caption for j in row)), label=0)
            for p, row in zip(pairs, partners.tolist(), strict=True)
        ]
        images = [[_decode(p)] for p in pairs]
        return PairBatch(self.student(examples, images), self.teacher(examples, images), partners)
