"""Read a base-style picture of the generated world back from its pixels, independently of the writers.

The base style draws flat shapes on a plain background, one quadrant each, so each quadrant's
content is recovered from pixels alone: nothing, a shape (colour: the nearest base palette colour;
kind: how much of its bounding box it fills), or a covered box (grey inside, framed in a colour).
Tests compare every label the world writes with what the pixels show.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vldistill.data.world.render import BASE_PALETTE, COVER_GREY
from vldistill.data.world.scene import POSITIONS

QUADRANTS: dict[str, tuple[slice, slice]] = {
    "top left": (slice(0, 32), slice(0, 32)),
    "top right": (slice(0, 32), slice(32, 64)),
    "bottom left": (slice(32, 64), slice(0, 32)),
    "bottom right": (slice(32, 64), slice(32, 64)),
}


@dataclass(frozen=True)
class Seen:
    """What one quadrant shows: a shape's colour and kind, or a covered box (kind None) of a colour."""

    position: str
    colour: str
    kind: str | None

    @property
    def covered(self) -> bool:
        return self.kind is None


def nearest_colour(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]] = BASE_PALETTE) -> str:
    """The palette name closest to ``rgb`` (Euclidean)."""
    return min(palette, key=lambda name: float(np.sum((np.asarray(palette[name]) - rgb) ** 2)))


def _kind(difference: np.ndarray) -> str:
    """The kind of the one unrotated shape in a quadrant, from its ``(32, 32, 3)`` difference to the background.

    A square fills all four corners of its bounding box; a triangle (apex up) is widest at its base; a
    star is widest a third of the way down and fills well under half of its box; a circle is the rest.
    """
    diff = difference.sum(axis=-1).astype(float)
    coverage = np.clip(diff / np.percentile(diff[diff > 60], 90), 0.0, 1.0)
    ys, xs = np.nonzero(coverage > 0.5)
    box = coverage[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    corners = (box[:2, :2].mean(), box[:2, -2:].mean(), box[-2:, :2].mean(), box[-2:, -2:].mean())
    if min(corners) > 0.3:
        return "square"
    widest = int(np.argmax(box.sum(axis=1))) / (box.shape[0] - 1)
    if widest > 0.8:
        return "triangle"
    return "star" if box.mean() < 0.55 else "circle"


def read_picture(path: Path) -> list[Seen]:
    """What a base-style picture shows, quadrant by quadrant (empty quadrants left out)."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    background = pixels[0, 0]  # the corners are never drawn on (see scene.SLOT_CENTRES)
    seen = []
    for position in POSITIONS:
        block = pixels[QUADRANTS[position]]
        mask = np.abs(block - background).sum(axis=-1) > 60
        if mask.sum() < 30:
            continue
        spread = block.max(axis=-1) - block.min(axis=-1)
        grey = mask & (spread < 20) & (np.abs(block.mean(axis=-1) - COVER_GREY[0]) < 20)
        if grey.sum() > 60:
            frame = mask & ~grey & (spread > 80)
            seen.append(Seen(position, nearest_colour(np.median(block[frame], axis=0)), None))
            continue
        seen.append(Seen(position, nearest_colour(np.median(block[mask], axis=0)), _kind(np.abs(block - background))))
    return seen
