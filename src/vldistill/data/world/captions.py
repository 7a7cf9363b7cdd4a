"""Plain image-caption pairs: ``captions/captions.jsonl`` and ``captions/images/<n>.jpg``.

The demo pre-trains its unimodal and contrastive encoders on these (unlabelled pairs are cheap and
plentiful; labelled VL data is scarce). Each line is ``{"image": "images/000000.jpg", "caption":
...}`` with the image path relative to the ``captions`` folder.
"""

from __future__ import annotations

from pathlib import Path

from vldistill.data.world.files import scaled, task_rng, write_jsonl
from vldistill.data.world.language import caption
from vldistill.data.world.render import STYLES, render, save_jpeg
from vldistill.data.world.scene import sample_scene

DEFAULT_CAPTIONS = 3000


def write_captions(root: Path, style: str, seed: int, scale: float) -> dict[str, int]:
    """Write ``root/captions`` for one style; returns ``{"captions": count}``."""
    rng = task_rng(seed, style, "captions")
    image_dir = root / "captions" / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    background = "photo" if STYLES[style].photo_background else "plain"
    rows = []
    for n in range(scaled(DEFAULT_CAPTIONS, scale)):
        scene = sample_scene(rng, rotate=STYLES[style].rotate)
        save_jpeg(render(scene, STYLES[style], rng), str(image_dir / f"{n:06d}.jpg"))
        rows.append({"image": f"images/{n:06d}.jpg", "caption": caption(scene, rng, background)})
    return {"captions": write_jsonl(root / "captions" / "captions.jsonl", rows)}
