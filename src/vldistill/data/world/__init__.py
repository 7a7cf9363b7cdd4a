"""The generated world: rendered shape scenes written as VQA v2, SNLI-VE, VCR and NLVR2 datasets.

``generate_world(out)`` writes, for each style, ``out/<style>/{vqa,snli_ve,vcr,nlvr2,captions}`` in
the publishers' layouts, so the demo reads it with the same readers as real data. The ``base`` style
draws flat shapes on plain backgrounds; ``shifted`` draws the same kinds of scenes, questions and
labels over photographs with another palette, a domain shift for the evaluation protocol.

The world is built so that a student must read the picture (issue 13): 64x64 pictures with 1-3
large shapes, one per quadrant (2x2 patches of 16 px each, see :mod:`.scene`); VQA and SNLI-VE draw
the answer or label first and the text from a deck per answer (:class:`.files.Deck`), so answers
are exactly balanced and the text alone is at chance; every SNLI-VE picture holds a covered box
(a grey box framed in a colour) that makes "neutral" a fact about the picture, not the text.

Output is a pure function of (style, seed, scale, generator version): every task and split draws
from its own random stream, and ``out/<style>/MANIFEST.json`` records the parameters so a second
call with the same ones returns at once (the demo caches the world).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vldistill.data.world.captions import write_captions
from vldistill.data.world.nlvr2 import write_nlvr2
from vldistill.data.world.snli_ve import write_snli_ve
from vldistill.data.world.vcr import write_vcr
from vldistill.data.world.vqa import write_vqa
from vldistill.errors import ConfigError

__all__ = ["GENERATOR_VERSION", "STYLE_CHOICES", "generate_world"]

GENERATOR_VERSION = "4"
"""Bump whenever the bytes written for a given seed change, so cached worlds are regenerated."""
STYLE_CHOICES: dict[str, tuple[str, ...]] = {
    "base": ("base",),
    "shifted": ("shifted",),
    "both": ("base", "shifted"),
}
MANIFEST = "MANIFEST.json"
_WRITERS = {
    "captions": write_captions,
    "vqa": write_vqa,
    "snli_ve": write_snli_ve,
    "vcr": write_vcr,
    "nlvr2": write_nlvr2,
}


def generate_world(out: Path, *, style: str = "both", seed: int = 0, scale: float = 1.0) -> dict[str, int]:
    """Write the generated world under ``out`` and return counts to print.

    Args:
        out: output folder; each style goes to ``out/<style>/``.
        style: ``base``, ``shifted`` or ``both``.
        seed: random seed; the same seed writes the same bytes.
        scale: multiplies every default size; at 1.0, per style: 6000/1500 VQA questions (train/val,
            one picture each), 6000/750/1500 SNLI-VE hypotheses (train/dev/test, one picture each),
            600/200 VCR questions, 300/100 NLVR2 sets (600/200 statements, 4 pictures a set) and 8000
            captions: about 26,000 pictures. Every split keeps a few examples.

    Returns:
        ``{"<style>/<task>/<split>": examples, "<style>/captions": n, "<style>/images": n}``.

    Raises:
        ConfigError: unknown style, non-positive scale, or ``out/<style>`` holds something that is
            not a generated world.
    """
    if style not in STYLE_CHOICES:
        raise ConfigError(f"style {style!r} is unknown; fix: use one of {', '.join(STYLE_CHOICES)}")
    if not scale > 0:
        raise ConfigError(f"scale {scale} must be positive; fix: pass e.g. --scale 1.0")
    out = Path(out)
    todo = [name for name in STYLE_CHOICES[style] if _cached_counts(out, _params(name, seed, scale)) is None]
    partials = {name: _fresh_partial(out, name) for name in todo}
    # Styles and tasks draw from independent random streams and write disjoint folders, so they
    # run at once; PIL releases the GIL while it draws, resizes and encodes, most of the work.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        futures = {
            (name, task): pool.submit(writer, partials[name], name, seed, scale)
            for name in todo
            for task, writer in _WRITERS.items()
        }
        results = {key: future.result() for key, future in futures.items()}
    counts: dict[str, int] = {}
    for name in STYLE_CHOICES[style]:
        params = _params(name, seed, scale)
        if name in todo:
            style_counts = {
                # A task with a single output (captions) is counted under its own name.
                f"{task}/{split}" if split != task else task: n
                for (style_name, task), splits in results.items()
                if style_name == name
                for split, n in splits.items()
            }
            _finish(out, name, partials[name], params, style_counts)
        cached = _cached_counts(out, params)
        assert cached is not None, "a world just written must match its own manifest"
        counts |= {f"{name}/{key}": value for key, value in cached.items()}
    return counts


def _params(style: str, seed: int, scale: float) -> dict[str, object]:
    return {"generator_version": GENERATOR_VERSION, "style": style, "seed": seed, "scale": scale}


def _cached_counts(out: Path, params: dict[str, object]) -> dict[str, int] | None:
    """The counts of ``out/<style>`` if it holds a world of these parameters, else None.

    Raises ConfigError if ``out/<style>`` holds files but no manifest: not ours to overwrite.
    """
    root = out / str(params["style"])
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        return dict(manifest["counts"]) if manifest.get("params") == params else None
    if root.is_dir() and any(root.iterdir()):
        raise ConfigError(
            f"{root} exists and is not a generated world (no {MANIFEST}); fix: pass another --out or empty it"
        )
    return None


def _fresh_partial(out: Path, style: str) -> Path:
    """An empty ``out/.<style>.partial-<pid>-<thread>`` to build the style in.

    Building next to the target and renaming it at the end means an interrupted run never leaves
    a half-written world that a later call would take for a complete one; the process and thread
    ids keep callers that generate the same world at once (distributed ranks) apart.
    """
    partial = out / f".{style}.partial-{os.getpid()}-{threading.get_ident()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def _finish(out: Path, style: str, partial: Path, params: dict[str, object], counts: dict[str, int]) -> None:
    """Write the manifest into ``partial`` and rename it to ``out/<style>``.

    If another process has meanwhile put the same world there, ours is dropped: both are identical.
    """
    counts = counts | {"images": sum(1 for p in partial.rglob("*") if p.suffix in (".jpg", ".png"))}
    manifest_text = json.dumps({"params": params, "counts": counts}, indent=2, sort_keys=True)
    (partial / MANIFEST).write_text(manifest_text + "\n", encoding="utf-8")
    root = out / style
    if _cached_counts(out, params) is None and root.exists():
        shutil.rmtree(root)  # empty, or a world of other parameters (it has our manifest)
    try:
        partial.rename(root)
    except OSError:
        if _cached_counts(out, params) is None:
            raise
        shutil.rmtree(partial)
