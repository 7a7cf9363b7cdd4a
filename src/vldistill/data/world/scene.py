"""Scenes of the generated world as plain data: 1-4 coloured shapes, each in one of four slots.

A scene is sampled once and then rendered, described and questioned; every writer reads the same
:class:`Scene`, so a label can never disagree with the picture. Coordinates are pixels of the
64x64 canvas, x to the right and y downwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CANVAS = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")

# Four slots on a diamond: each position word names exactly one slot, so "where" has one answer,
# and the slots are far enough apart that two large shapes never touch.
SLOT_CENTRES: dict[str, tuple[float, float]] = {
    "left": (14.0, 32.0),
    "right": (50.0, 32.0),
    "top": (32.0, 14.0),
    "bottom": (32.0, 50.0),
}
RADII: dict[str, float] = {"small": 5.0, "large": 9.0}
SLOT_JITTER = 1.5
MAX_SHIFTED_ANGLE = 25.0
CIRCLE_SEGMENTS = 16


@dataclass(frozen=True)
class Shape:
    """One object of a scene.

    ``angle`` (degrees) rotates the outline; it is 0 in the base style and random in the shifted
    style, one of the ways the shifted world draws its shapes differently.
    """

    kind: str
    colour: str
    size: str
    position: str
    cx: float
    cy: float
    angle: float = 0.0

    @property
    def radius(self) -> float:
        """Radius of the shape's circumscribing circle before the kind's own proportions."""
        return RADII[self.size]

    def outline(self) -> list[tuple[float, float]]:
        """Polygon of the drawn shape in pixels (a circle is approximated by 16 points)."""
        r = self.radius
        if self.kind == "circle":
            angles = [2 * math.pi * k / CIRCLE_SEGMENTS for k in range(CIRCLE_SEGMENTS)]
            points = [(r * math.cos(a), r * math.sin(a)) for a in angles]
        elif self.kind == "square":
            h = 0.8 * r
            points = [(-h, -h), (h, -h), (h, h), (-h, h)]
        elif self.kind == "triangle":
            # Equilateral, apex up, centred on its circumcentre.
            points = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        else:
            outer, inner = 1.1 * r, 0.45 * r
            points = [
                (
                    (outer if k % 2 == 0 else inner) * math.cos(-math.pi / 2 + k * math.pi / 5),
                    (outer if k % 2 == 0 else inner) * math.sin(-math.pi / 2 + k * math.pi / 5),
                )
                for k in range(10)
            ]
        theta = math.radians(self.angle)
        cos, sin = math.cos(theta), math.sin(theta)
        return [(self.cx + x * cos - y * sin, self.cy + x * sin + y * cos) for x, y in points]

    def box(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x1, y1, x2, y2)`` in pixels of what :func:`render` draws."""
        if self.kind == "circle":
            r = self.radius
            return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)
        xs, ys = zip(*self.outline(), strict=True)
        return (min(xs), min(ys), max(xs), max(ys))


@dataclass(frozen=True)
class Scene:
    """The objects of one picture, in the order VCR refers to them (``objects[i]``)."""

    shapes: tuple[Shape, ...]

    def count(self, kind: str | None = None, colour: str | None = None, size: str | None = None) -> int:
        """How many shapes match every attribute given (``None`` matches anything)."""
        return len(self.matching(kind=kind, colour=colour, size=size))

    def matching(
        self,
        kind: str | None = None,
        colour: str | None = None,
        size: str | None = None,
        position: str | None = None,
    ) -> list[int]:
        """Indices of the shapes that match every attribute given."""
        wanted = {"kind": kind, "colour": colour, "size": size, "position": position}
        return [
            i
            for i, shape in enumerate(self.shapes)
            if all(value is None or getattr(shape, attr) == value for attr, value in wanted.items())
        ]


def sample_scene(rng: np.random.Generator, *, rotate: bool, n_shapes: int | None = None) -> Scene:
    """Sample a scene of ``n_shapes`` (default: uniform in 1..4) shapes in distinct slots.

    ``rotate`` gives every polygon a random angle (the shifted style's rendering).
    """
    n = int(rng.integers(1, 5)) if n_shapes is None else n_shapes
    slots = rng.permutation(len(POSITIONS))[:n]
    shapes = []
    for slot in slots:
        position = POSITIONS[int(slot)]
        cx, cy = SLOT_CENTRES[position]
        dx, dy = rng.uniform(-SLOT_JITTER, SLOT_JITTER, size=2)
        angle = float(rng.uniform(-MAX_SHIFTED_ANGLE, MAX_SHIFTED_ANGLE)) if rotate else 0.0
        shapes.append(
            Shape(
                kind=SHAPES[int(rng.integers(len(SHAPES)))],
                colour=COLOURS[int(rng.integers(len(COLOURS)))],
                size=SIZES[int(rng.integers(len(SIZES)))],
                position=position,
                cx=round(cx + float(dx), 2),
                cy=round(cy + float(dy), 2),
                angle=round(angle, 2),
            )
        )
    return Scene(tuple(shapes))
