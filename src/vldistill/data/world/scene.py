"""Scenes of the generated world as plain data: 1-3 coloured shapes, each in one quadrant of the picture.

A scene is sampled once and then rendered, described and questioned; every writer reads the same
:class:`Scene`, so a label can never disagree with the picture. Coordinates are pixels of the
64x64 canvas, x to the right and y downwards.

The layout is chosen for students that read the picture in 16-pixel patches (ViLT-style, 4x4
patches at 64 px): each quadrant is exactly 2x2 patches and holds at most one shape, and shapes are
large enough to fill most of it. Smaller shapes on a finer layout were not learnt by a 2-layer
student in the demo's time budget (``shared/notes/demo-feasibility.md``).

A shape can be *covered*: drawn as an upright grey box framed in its colour, its kind hidden. The
SNLI-VE writer uses this for its neutral label (the picture can neither confirm nor refute "there
is a red circle" when a red-framed box hides something), and 30% of the caption pictures hold one;
:meth:`Scene.matching` and :meth:`Scene.count` see only what is visible. :func:`near_miss` gives the
hard negatives of VQA and SNLI-VE: a shape sharing exactly one of the asked kind and colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CANVAS = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

# Four quadrants: each position names exactly one slot, so "where" has one answer, and a shape of
# either size stays inside its quadrant (radius + jitter < 16 px), so two shapes never touch.
SLOT_CENTRES: dict[str, tuple[float, float]] = {
    "top left": (16.0, 16.0),
    "top right": (48.0, 16.0),
    "bottom left": (16.0, 48.0),
    "bottom right": (48.0, 48.0),
}
RADII: dict[str, float] = {"small": 9.0, "large": 12.5}
SLOT_JITTER = 1.5
MAX_SHAPES = 3
MAX_SHIFTED_ANGLE = 25.0
CIRCLE_SEGMENTS = 16


@dataclass(frozen=True)
class Shape:
    """One object of a scene.

    ``angle`` (degrees) rotates the outline of an uncovered polygon; it is 0 in the base style and
    random in the shifted style, one of the ways the shifted world draws its shapes differently.
    """

    kind: str
    colour: str
    size: str
    position: str
    cx: float
    cy: float
    angle: float = 0.0
    covered: bool = False

    @property
    def radius(self) -> float:
        """Radius of the shape's circumscribing circle before the kind's own proportions."""
        return RADII[self.size]

    def outline(self) -> list[tuple[float, float]]:
        """Polygon of the drawn shape in pixels (a circle is approximated by 16 points).

        A covered shape's box is never rotated: turned, it would reach into the next quadrant.
        """
        r = self.radius
        if self.covered:  # the box that hides the shape: a square as wide as the shape's circle
            return [
                (self.cx - r, self.cy - r),
                (self.cx + r, self.cy - r),
                (self.cx + r, self.cy + r),
                (self.cx - r, self.cy + r),
            ]
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
        if self.kind == "circle" or self.covered:
            r = self.radius
            return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)
        xs, ys = zip(*self.outline(), strict=True)
        return (min(xs), min(ys), max(xs), max(ys))


@dataclass(frozen=True)
class Scene:
    """The objects of one picture, in the order VCR refers to them (``objects[i]``)."""

    shapes: tuple[Shape, ...]

    @property
    def visible(self) -> tuple[Shape, ...]:
        """The shapes that are not covered (what captions and questions may name)."""
        return tuple(s for s in self.shapes if not s.covered)

    @property
    def covered(self) -> tuple[Shape, ...]:
        """The covered shapes (grey boxes framed in their colour)."""
        return tuple(s for s in self.shapes if s.covered)

    def count(self, kind: str | None = None, colour: str | None = None, size: str | None = None) -> int:
        """How many visible shapes match every attribute given (``None`` matches anything)."""
        return len(self.matching(kind=kind, colour=colour, size=size))

    def matching(
        self,
        kind: str | None = None,
        colour: str | None = None,
        size: str | None = None,
        position: str | None = None,
    ) -> list[int]:
        """Indices (into ``shapes``) of the visible shapes that match every attribute given."""
        wanted = {"kind": kind, "colour": colour, "size": size, "position": position}
        return [
            i
            for i, shape in enumerate(self.shapes)
            if not shape.covered
            and all(value is None or getattr(shape, attr) == value for attr, value in wanted.items())
        ]


def place(
    rng: np.random.Generator,
    specs: list[tuple[str, str, str | None]],
    *,
    rotate: bool,
    covered: tuple[str, str] | None = None,
    positions: list[str] | None = None,
) -> Scene:
    """A scene of the shapes ``specs`` (``(kind, colour, size or None)``, a random size for None) in
    distinct random quadrants, in the order given, then a covered box ``(kind hidden, colour)``.

    ``positions`` fixes the quadrant of the first shapes (the rest are drawn from the free ones).
    ``rotate`` gives every polygon a random angle (the shifted style's rendering).

    Raises:
        ValueError: more shapes than quadrants.
    """
    n = len(specs) + (covered is not None)
    if n > len(POSITIONS):
        raise ValueError(f"{n} shapes do not fit in {len(POSITIONS)} quadrants")
    fixed = list(positions or [])
    free = [p for p in POSITIONS if p not in fixed]
    slots = fixed + [free[int(k)] for k in rng.permutation(len(free))[: n - len(fixed)]]
    items = [*specs, *([(covered[0], covered[1], None)] if covered is not None else [])]
    shapes = []
    for k, ((kind, colour, size), position) in enumerate(zip(items, slots, strict=True)):
        cx, cy = SLOT_CENTRES[position]
        dx, dy = rng.uniform(-SLOT_JITTER, SLOT_JITTER, size=2)
        angle = float(rng.uniform(-MAX_SHIFTED_ANGLE, MAX_SHIFTED_ANGLE)) if rotate else 0.0
        shapes.append(
            Shape(
                kind=kind,
                colour=colour,
                size=size or SIZES[int(rng.integers(len(SIZES)))],
                position=position,
                cx=round(cx + float(dx), 2),
                cy=round(cy + float(dy), 2),
                angle=round(angle, 2),
                covered=covered is not None and k == len(items) - 1,
            )
        )
    return Scene(tuple(shapes))


def random_spec(
    rng: np.random.Generator, *, avoid: tuple[str | None, str | None] = (None, None)
) -> tuple[str, str, None]:
    """A random ``(kind, colour, None)`` that is not the kind-colour pair ``avoid`` (None: any)."""
    while True:
        kind, colour = SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))]
        if (kind, colour) != avoid:
            return kind, colour, None


def near_miss(rng: np.random.Generator, kind: str, colour: str) -> tuple[str, str, None]:
    """A ``(kind, colour, None)`` sharing exactly one of ``kind`` and ``colour`` (each half the time)."""
    if rng.random() < 0.5:
        kinds = [k for k in SHAPES if k != kind]
        return kinds[int(rng.integers(len(kinds)))], colour, None
    colours = [c for c in COLOURS if c != colour]
    return kind, colours[int(rng.integers(len(colours)))], None


def sample_scene(rng: np.random.Generator, *, rotate: bool, n_shapes: int | None = None) -> Scene:
    """Sample a scene of ``n_shapes`` (default: uniform in 1..3) random shapes in distinct quadrants.

    ``rotate`` gives every polygon a random angle (the shifted style's rendering).
    """
    n = int(rng.integers(1, MAX_SHAPES + 1)) if n_shapes is None else n_shapes
    return place(rng, [random_spec(rng) for _ in range(n)], rotate=rotate)
