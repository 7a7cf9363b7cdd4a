"""The generated world: official layouts, balance, determinism, caching and the domain shift."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vldistill.data.check import check_dataset
from vldistill.data.readers import read_task
from vldistill.data.world import GENERATOR_VERSION, generate_world
from vldistill.data.world.language import refer
from vldistill.data.world.scene import Scene, Shape
from vldistill.errors import ConfigError
from vldistill.metrics.vqa import normalize_answer

STYLES = ("base", "shifted")
SCALE = 0.05  # the shared ``world`` fixture's (tests/data/conftest.py)
# One picture per VQA question and per SNLI-VE hypothesis; NLVR2: two statements (pairs) per set.
EXPECTED_COUNTS = {
    "vqa/train2014": 300,
    "vqa/val2014": 75,
    "snli_ve/train": 300,
    "snli_ve/dev": 38,
    "snli_ve/test": 75,
    "vcr/train": 30,
    "vcr/val": 10,
    "nlvr2/train": 30,
    "nlvr2/dev": 10,
    "captions": 400,
}
SPLITS = {
    "vqa": ("train2014", "val2014"),
    "snli_ve": ("train", "dev", "test"),
    "vcr": ("train", "val"),
    "nlvr2": ("train", "dev"),
}


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_counts_match_the_default_sizes_times_scale(world: tuple[Path, dict[str, int]]) -> None:
    out, counts = world
    for style in STYLES:
        for key, value in EXPECTED_COUNTS.items():
            assert counts[f"{style}/{key}"] == value, key
        images = sum(1 for p in (out / style).rglob("*") if p.suffix in (".jpg", ".png"))
        assert counts[f"{style}/images"] == images
        manifest = json.loads((out / style / "MANIFEST.json").read_text())
        assert manifest["params"] == {
            "generator_version": GENERATOR_VERSION,
            "style": style,
            "seed": 0,
            "scale": SCALE,
        }


def test_same_seed_same_bytes_other_seed_other_bytes(world: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    out, _ = world
    generate_world(tmp_path / "again", style="base", seed=0, scale=SCALE)
    assert _digests(tmp_path / "again" / "base") == _digests(out / "base")
    generate_world(tmp_path / "other", style="base", seed=1, scale=SCALE)
    first, other = _digests(out / "base"), _digests(tmp_path / "other" / "base")
    common = first.keys() & other.keys()
    changed = [name for name in common if first[name] != other[name]]
    assert "vqa/v2_mscoco_train2014_annotations.json" in changed
    assert len(changed) > 0.9 * len(common)


def test_second_call_is_cached_and_other_parameters_regenerate(tmp_path: Path) -> None:
    counts = generate_world(tmp_path, style="base", seed=0, scale=0.02)
    marker = tmp_path / "base" / "vqa" / "v2_mscoco_val2014_annotations.json"
    before = marker.stat().st_mtime_ns
    assert generate_world(tmp_path, style="base", seed=0, scale=0.02) == counts
    assert marker.stat().st_mtime_ns == before
    bigger = generate_world(tmp_path, style="base", seed=0, scale=0.03)
    assert bigger["base/captions"] == 240 and counts["base/captions"] == 160
    assert not list(tmp_path.glob(".base.partial*"))
    assert len(list((tmp_path / "base" / "captions" / "images").iterdir())) == 240


def test_callers_generating_the_same_world_at_once_agree(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(generate_world, tmp_path, style="base", seed=3, scale=0.02) for _ in range(2)]
        first, second = (f.result() for f in futures)
    assert first == second and first["base/captions"] == 160
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_refuses_bad_arguments_and_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="style 'photo'"):
        generate_world(tmp_path, style="photo")
    with pytest.raises(ConfigError, match="scale 0"):
        generate_world(tmp_path, scale=0)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a generated world"):
        generate_world(tmp_path, style="base", scale=0.02)


def test_vqa_official_layout_and_annotator_variants(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    root = out / "base" / "vqa"
    raw_answers = []
    for split in SPLITS["vqa"]:
        questions = json.loads((root / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())
        annotations = json.loads((root / f"v2_mscoco_{split}_annotations.json").read_text())
        assert set(questions) == {"info", "task_type", "data_type", "data_subtype", "license", "questions"}
        assert (questions["task_type"], questions["data_type"], questions["data_subtype"]) == (
            "Open-Ended",
            "mscoco",
            split,
        )
        assert set(annotations) == {"info", "license", "data_subtype", "data_type", "annotations"}
        by_id = {a["question_id"]: a for a in annotations["annotations"]}
        assert len(by_id) == len(questions["questions"])
        for q in questions["questions"]:
            assert set(q) == {"image_id", "question", "question_id"}
            assert (root / split / f"COCO_{split}_{q['image_id']:012d}.jpg").is_file()
            a = by_id[q["question_id"]]
            assert a["image_id"] == q["image_id"]
            assert a["answer_type"] in ("yes/no", "number", "other")
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert {x["answer_confidence"] for x in a["answers"]} <= {"yes", "maybe", "no"}
            normalized = Counter(normalize_answer(x["answer"]) for x in a["answers"])
            assert normalized[a["multiple_choice_answer"]] == max(normalized.values())
            if a["answer_type"] == "number":
                assert a["question_type"] == "how many" and a["multiple_choice_answer"].isdigit()
            raw_answers += [x["answer"] for x in a["answers"]]
    raw = set(raw_answers)
    assert raw & {"Yes", "yes!", "yes.", "No", "no.", "nope"}
    assert any(r in raw for r in ("one", "two", "three", "One", "Two", "two.", "one."))
    assert any(r.startswith(("a ", "an ")) for r in raw)
    assert any(r.endswith(" ") for r in raw)


def test_vqa_answer_spellings_normalise_to_the_answer_under_the_official_rules() -> None:
    assert [normalize_answer(a) for a in ["Two", "2 ", "two.", "a circle", "Yes!", "none"]] == [
        "2",
        "2",
        "2",
        "circle",
        "yes",
        "0",
    ]


def test_snli_ve_layout_and_exact_label_balance(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    root = out / "shifted" / "snli_ve"
    for split in SPLITS["snli_ve"]:
        rows = _jsonl(root / f"snli_ve_{split}.jsonl")
        labels = Counter(r["gold_label"] for r in rows)
        assert set(labels) == {"entailment", "neutral", "contradiction"}
        assert max(labels.values()) - min(labels.values()) <= 1
        for r in rows:
            assert set(r) == {
                "Flickr30K_ID",
                "annotator_labels",
                "captionID",
                "gold_label",
                "pairID",
                "sentence1",
                "sentence1_binary_parse",
                "sentence1_parse",
                "sentence2",
                "sentence2_binary_parse",
                "sentence2_parse",
            }
            assert (root / "flickr30k_images" / f"{r['Flickr30K_ID']}.jpg").is_file()
            assert r["pairID"] == f"{r['captionID']}r1{r['gold_label'][0]}"
            assert Counter(r["annotator_labels"])[r["gold_label"]] >= (1 if split == "train" else 3)
            assert r["sentence1"].endswith(".") and r["sentence2"].endswith(".")


def _object_mask(image: Image.Image) -> np.ndarray:
    """Pixels that differ clearly from the plain background (taken at the corner)."""
    pixels = np.asarray(image, dtype=np.int32)
    return np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 60


def test_vcr_references_in_range_and_boxes_match_the_rendered_objects(
    world: tuple[Path, dict[str, int]],
) -> None:
    out, _ = world
    root = out / "base" / "vcr"
    for split in SPLITS["vcr"]:
        rows = _jsonl(root / f"{split}.jsonl")
        for field in ("answer_label", "rationale_label"):
            spread = Counter(r[field] for r in rows)
            assert set(spread) == {0, 1, 2, 3} and max(spread.values()) - min(spread.values()) <= 1
        for n, r in enumerate(rows):
            assert r["annot_id"] == f"{split}-{n}"
            assert r["img_fn"] == f"{r['movie']}/{Path(r['img_fn']).name}"
            assert len(r["answer_choices"]) == len(r["rationale_choices"]) == 4
            assert len({json.dumps(c) for c in r["answer_choices"]}) == 4
            texts = [r["question"], *r["answer_choices"], *r["rationale_choices"]]
            refs = [i for text in texts for tok in text if isinstance(tok, list) for i in tok]
            assert refs and all(0 <= i < len(r["objects"]) for i in refs)
            assert all(isinstance(tok, str) for text in texts for tok in text if not isinstance(tok, list))
            assert all(any(isinstance(tok, list) for tok in choice) for choice in r["answer_choices"])
            assert r["answer_match_iter"][r["answer_label"]] == 0
            meta = json.loads((root / "vcr1images" / r["metadata_fn"]).read_text())
            assert meta["names"] == r["objects"] and (meta["width"], meta["height"]) == (64, 64)
            assert len(meta["boxes"]) == len(meta["segms"]) == len(r["objects"])
            mask = _object_mask(Image.open(root / "vcr1images" / r["img_fn"]).convert("RGB"))
            ys, xs = np.nonzero(mask)
            boxes = np.array(meta["boxes"])
            # The union of the boxes is where the drawn objects are (1.5 px for anti-aliasing).
            assert abs(xs.min() - boxes[:, 0].min()) <= 1.5 and abs(xs.max() + 1 - boxes[:, 2].max()) <= 1.5
            assert abs(ys.min() - boxes[:, 1].min()) <= 1.5 and abs(ys.max() + 1 - boxes[:, 3].max()) <= 1.5
            for x1, y1, x2, y2, score in boxes:
                assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and 0.9 <= score <= 1.0
                assert mask[int((y1 + y2) / 2), int((x1 + x2) / 2)]


def test_nlvr2_layout_pairs_and_balance(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    root = out / "base" / "nlvr2"
    for split in SPLITS["nlvr2"]:
        rows = _jsonl(root / f"{split}.json")
        assert Counter(r["label"] for r in rows) == {"True": len(rows) // 2, "False": len(rows) // 2}
        by_set: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            assert re.fullmatch(rf"{split}-\d+-\d+-0", r["identifier"])
            assert ("directory" in r) == (split == "train")
            assert r["extra_validations"] == {}
            stem = r["identifier"].rsplit("-", 1)[0]
            folder = root / "images" / split / (str(r["directory"]) if split == "train" else "")
            for side in (0, 1):
                with Image.open(folder / f"{stem}-img{side}.png") as image:
                    assert image.size == (64, 64) and image.format == "PNG"
            by_set.setdefault(r["identifier"].split("-")[1], []).append(r)
        for pairs in by_set.values():
            assert len({p["sentence"] for p in pairs}) == 1
            assert sorted(p["label"] for p in pairs) == ["False", "True"]


def test_captions_describe_the_scenes_in_varied_words(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world
    root = out / "base" / "captions"
    rows = _jsonl(root / "captions.jsonl")
    assert len(rows) == 400
    assert all((root / r["image"]).is_file() for r in rows)
    assert len({r["caption"] for r in rows}) > 0.8 * len(rows)
    assert len({r["caption"].split()[0] for r in rows}) >= 5
    shape_words = ("circle", "square", "triangle", "star", "shape")
    assert all(any(w in r["caption"] for w in shape_words) for r in rows)


def test_shifted_style_differs_in_background_statistics(world: tuple[Path, dict[str, int]]) -> None:
    out, _ = world

    def border_stats(style: str) -> tuple[float, float]:
        rings = []
        for path in sorted((out / style / "vqa" / "train2014").glob("*.jpg")):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
            rings.append(np.concatenate([pixels[:3].reshape(-1, 3), pixels[-3:].reshape(-1, 3)]))
        return float(np.mean([r.mean() for r in rings])), float(np.mean([r.std(axis=0).mean() for r in rings]))

    base_mean, base_std = border_stats("base")
    shifted_mean, shifted_std = border_stats("shifted")
    assert base_mean < 70 and base_std < 5  # plain dark backgrounds
    assert shifted_mean > base_mean + 30 and shifted_std > 4 * base_std  # photographs


def test_shape_geometry_and_referring_expressions() -> None:
    circle = Shape("circle", "red", "large", "top left", 16.0, 15.0)
    square = Shape("square", "red", "small", "top right", 48.0, 16.0)
    other = Shape("circle", "blue", "small", "bottom right", 48.0, 48.0)
    box = Shape("star", "green", "small", "bottom left", 16.0, 48.0, covered=True)
    assert circle.box() == (3.5, 2.5, 28.5, 27.5)  # radius 12.5
    assert square.box() == pytest.approx((40.8, 8.8, 55.2, 23.2))  # half side 0.8 * 9
    assert box.box() == (7.0, 39.0, 25.0, 57.0)  # a covered shape is a square box as wide as its circle
    scene = Scene((circle, square, other, box))
    assert scene.count(kind="circle") == 2 and scene.count(colour="red") == 2 and scene.count(size="small") == 2
    assert scene.count(kind="star") == 0 and scene.count(colour="green") == 0  # the box hides its shape
    assert scene.matching(position="bottom left") == [] and scene.covered == (box,)
    rng = np.random.default_rng(0)
    scene = Scene((circle, square, other))
    assert {refer(scene, 1, rng) for _ in range(20)} == {"the square", "the red square"}
    assert refer(scene, 0, rng, exclude=("colour", "size", "position")) is None
    assert refer(scene, 2, rng, exclude=("colour", "size", "position", "kind")) is None
    assert {refer(scene, 0, rng, exclude=("kind",)) for _ in range(20)} == {
        "the large object",
        "the object at the top left",
    }


def test_a_covered_box_makes_descriptions_it_could_fit_ambiguous() -> None:
    star = Shape("star", "red", "large", "top left", 16.0, 16.0)
    box = Shape("circle", "red", "small", "bottom right", 48.0, 48.0, covered=True)
    rng = np.random.default_rng(0)
    # Alone, "the star" picks the star out; a red box may hide another (red) star of any size, so
    # only the place tells them apart.
    assert {refer(Scene((star,)), 0, rng) for _ in range(20)} == {"the star", "the red star"}
    assert {refer(Scene((star, box)), 0, rng) for _ in range(20)} == {
        "the shape at the top left",
        "the star at the top left",
    }


def test_every_split_passes_data_check(world: tuple[Path, dict[str, int]]) -> None:
    out, counts = world
    for style in STYLES:
        for task, splits in SPLITS.items():
            for split in splits:
                summary = check_dataset(task, out / style / task, split)
                assert summary["records"] == counts[f"{style}/{task}/{split}"]
                if task in ("vqa", "snli_ve"):  # one picture per question / hypothesis
                    assert summary["images"] == summary["records"]
                if task == "nlvr2":  # two pairs per set, a left and a right picture each
                    assert summary["images"] == 2 * summary["records"]


def test_every_task_and_split_round_trips_through_the_readers(world: tuple[Path, dict[str, int]]) -> None:
    out, counts = world
    for style in STYLES:
        for task, splits in SPLITS.items():
            for split in splits:
                records = read_task(task, out / style / task, split)
                assert len(records) == counts[f"{style}/{task}/{split}"]
        vqa = read_task("vqa", out / style / "vqa", "val2014")
        assert all(len(r.answers) == 10 and r.image_path.is_file() for r in vqa)
        vcr = read_task("vcr", out / style / "vcr", "val")
        assert all(len(r.boxes) == len(r.objects) and r.width == 64 for r in vcr)
        nlvr2 = read_task("nlvr2", out / style / "nlvr2", "dev")
        assert sum(r.label is True for r in nlvr2) == len(nlvr2) // 2
