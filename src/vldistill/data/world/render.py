"""Rendering scenes to 64x64 RGB pictures in the base or the shifted style (PIL only).

The base style draws flat shapes on a plain dark background. The shifted style is a domain shift
that keeps every label valid: backgrounds are crops of the photographs that scikit-image ships,
the palette's hues are rotated (a "red" is an orange-red, a "blue" a violet-blue), polygons are
rotated (``Shape.angle``, set by :func:`~vldistill.data.world.scene.place`) and shapes get a light
outline. A covered shape is a grey box (:data:`COVER_GREY`) inside a :data:`COVER_FRAME`-pixel frame
of its colour, in both styles. Shapes are drawn at 4x and box-filtered down (anti-aliased edges).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from vldistill.data.world.scene import CANVAS, Scene

SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges without a dependency
QUADRANT = CANVAS // 2  # pixels; each shape is drawn on its own quadrant
JPEG_QUALITY = 90
BASE_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (50, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 50),
    "purple": (150, 60, 200),
}
HUE_SHIFT = 0.05  # of a full turn, 18 degrees: names stay right, pixels move
PHOTO_NAMES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "grass")
PHOTO_SHORT_SIDE = 150  # photos are pre-shrunk to about this short side
MIN_CROP = 64  # pixels of the pre-shrunk photo: no crop is upsampled
PHOTO_BLEND = 0.25  # towards mid grey, so shapes stay visible on busy photos
COLOUR_JITTER = 12
COVER_GREY = (128, 128, 128)
COVER_FRAME = 3  # pixels of the coloured frame around a covered shape's grey box


def _shift_hue(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    r, g, b = colorsys.hsv_to_rgb((h + HUE_SHIFT) % 1.0, 0.85 * s, min(1.0, 1.05 * v))
    return (round(r * 255), round(g * 255), round(b * 255))


@dataclass(frozen=True)
class Style:
    """How a scene looks: palette, background source, outline, polygon rotation."""

    name: str
    palette: dict[str, tuple[int, int, int]]
    photo_background: bool
    outline: tuple[int, int, int] | None
    rotate: bool


STYLES: dict[str, Style] = {
    "base": Style("base", BASE_PALETTE, photo_background=False, outline=None, rotate=False),
    "shifted": Style(
        "shifted",
        {name: _shift_hue(rgb) for name, rgb in BASE_PALETTE.items()},
        photo_background=True,
        outline=(245, 245, 235),
        rotate=True,
    ),
}


@lru_cache(maxsize=1)
def _photos() -> tuple[Image.Image, ...]:
    """The scikit-image sample photographs used as shifted backgrounds (bundled, offline)."""
    import skimage.data  # imported here: only the shifted style needs it, and it is slow to import

    photos = []
    for name in PHOTO_NAMES:
        array = np.asarray(getattr(skimage.data, name)())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        photo = Image.fromarray(array[..., :3].astype(np.uint8), "RGB")
        # Crops are shrunk to 64 px anyway; pre-shrinking makes each crop's box filter cheap.
        photos.append(photo.reduce(max(1, min(photo.size) // PHOTO_SHORT_SIDE)))
    return tuple(photos)


def _background(style: Style, rng: np.random.Generator) -> Image.Image:
    if not style.photo_background:
        level = int(rng.integers(25, 65))
        tint = rng.integers(-6, 7, size=3)
        colour = tuple(int(c) for c in np.clip(level + tint, 0, 255))
        return Image.new("RGB", (CANVAS, CANVAS), colour)
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    side = int(rng.integers(MIN_CROP, min(photo.size) + 1))
    x0 = int(rng.integers(0, photo.width - side + 1))
    y0 = int(rng.integers(0, photo.height - side + 1))
    crop = photo.resize((CANVAS, CANVAS), Image.Resampling.BOX, box=(x0, y0, x0 + side, y0 + side))
    return Image.blend(crop, Image.new("RGB", crop.size, (110, 110, 110)), PHOTO_BLEND)


def render(scene: Scene, style: Style, rng: np.random.Generator) -> Image.Image:
    """Draw ``scene`` in ``style``; ``rng`` picks the background and small colour jitter.

    Returns a ``(64, 64)`` RGB image whose object extents match :meth:`Shape.box`. A covered shape is
    a grey box with a frame in its colour.
    """
    # Shapes are drawn at 4x onto the nearest-upsampled background and box-filtered back: the
    # background keeps its exact pixels and shape edges are anti-aliased, with no alpha compositing.
    # Only the quadrants that hold a shape are resampled: a shape never leaves its quadrant
    # (scene.SLOT_CENTRES) and at an integer factor the box filter reads each output pixel's own
    # 4x4 block, so the bytes are those of resampling the whole picture, for a fraction of the work.
    picture = _background(style, rng)
    canvas = Image.new("RGB", (CANVAS * SUPERSAMPLE, CANVAS * SUPERSAMPLE))
    draw = ImageDraw.Draw(canvas)
    width = SUPERSAMPLE if style.outline else 0
    quadrants = []
    for shape in scene.shapes:
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3).tolist()
        fill = tuple(min(255, max(0, c + j)) for c, j in zip(style.palette[shape.colour], jitter, strict=True))
        quadrant = (QUADRANT * (shape.cx >= QUADRANT), QUADRANT * (shape.cy >= QUADRANT))
        quadrants.append(quadrant)
        tile = picture.crop((*quadrant, quadrant[0] + QUADRANT, quadrant[1] + QUADRANT))
        size = QUADRANT * SUPERSAMPLE
        canvas.paste(
            tile.resize((size, size), Image.Resampling.NEAREST), (quadrant[0] * SUPERSAMPLE, quadrant[1] * SUPERSAMPLE)
        )
        points = [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in shape.outline()]
        if shape.covered:  # a grey box framed in the shape's colour: the colour shows, the kind does not
            draw.polygon(points, fill=COVER_GREY, outline=fill, width=COVER_FRAME * SUPERSAMPLE)
        elif shape.kind == "circle":
            x1, y1, x2, y2 = (v * SUPERSAMPLE for v in shape.box())
            draw.ellipse((x1, y1, x2, y2), fill=fill, outline=style.outline, width=width)
        else:
            draw.polygon(points, fill=fill, outline=style.outline, width=width)
    for x0, y0 in quadrants:
        box = (x0 * SUPERSAMPLE, y0 * SUPERSAMPLE, (x0 + QUADRANT) * SUPERSAMPLE, (y0 + QUADRANT) * SUPERSAMPLE)
        picture.paste(canvas.resize((QUADRANT, QUADRANT), Image.Resampling.BOX, box=box), (x0, y0))
    return picture


def save_jpeg(image: Image.Image, path: str) -> None:
    """Write ``image`` as a JPEG of quality 90 without chroma subsampling.

    Default 4:2:0 subsampling halves colour resolution, which smears a 10-pixel shape's colour into
    its neighbours; colour is half of what this world asks about.
    """
    image.save(path, "JPEG", quality=JPEG_QUALITY, subsampling=0)
