"""``bench/cache_size.py`` end to end on tiny stand-in teachers: the presets it measures and its figures."""

from __future__ import annotations

import pytest
from bench_scripts import bench_script
from tiny_configs import TINY_TEACHER

from vldistill.models.teachers import TeacherConfig, build_teacher


@pytest.fixture(scope="module")
def bench():
    with bench_script("cache_size") as module:
        yield module


def test_every_preset_with_teachers_is_measured(bench):
    assert bench.presets() == [
        "clip_td-snli_ve",
        "clip_td-vcr",
        "clip_td-vqa",
        "dide-nlvr2",
        "dide-snli_ve",
        "dide-vqa",
        "mad-snli_ve",
        "mad-vcr",
        "mad-vqa",
    ]
    assert set(bench.SPLITS) == {"vqa", "snli_ve", "vcr", "nlvr2"}


def test_measure_gives_sizes_projection_and_loss_errors_per_storage(bench, tmp_path, monkeypatch):
    def tiny(spec, task, answers):  # the real-size stand-ins are too slow for a unit test
        return build_teacher(TeacherConfig(kind=spec.kind, tiny=TINY_TEACHER, image_size=32), task=task)

    monkeypatch.setattr(bench, "real_teacher", tiny)
    result = bench.measure("clip_td-vqa", 3, tmp_path, {}, repeats=1)
    options = result["options"]
    assert result["storage"] == "float16" and result["projected_gb"] == options["float16"]["projected_gb"]
    f32, f16, i8 = options["float32"], options["float16"], options["int8"]
    assert f32["rows"] == f16["rows"] == i8["rows"] == {"images": 3, "texts": 3, "examples": 3}
    assert f32["bytes_per_image"] > f16["bytes_per_image"] > i8["bytes_per_image"]
    assert f32["bytes_per_example"] == f16["bytes_per_example"]  # candidate scores stay float32
    split = bench.SPLITS["vqa"]
    rows = sum(f16[f"bytes_per_{k}"] * getattr(split, f"{k}s") for k in ("image", "text", "example"))
    assert rows / 1e9 <= f16["projected_gb"] <= rows / 1e9 + 0.1  # plus the image-hash index and derived maps
    assert f32["max_relative_loss_error"] == 0.0 and f16["max_relative_loss_error"] <= 1e-3
    assert set(f32["loss_terms"]) == {"feature/clip/image", "feature/clip/text"}
    assert not list(tmp_path.iterdir())  # the caches are removed
