"""The teacher cache's storage format 2 (issue 15): rows per image, per text and per example, content-keyed,
derived fields, fp16 / int8 storage, the old format kept apart; lookups equal the live teachers."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.data.loader import ExampleDataset, ImageStore, collate_fn
from vldistill.errors import DataError
from vldistill.training.cache import TeacherCache, ensure_cache, open_teacher_cache
from vldistill.training.cache.shards import decode, encode
from vldistill.training.experiment import build_models, load_data

CASES = {
    "clip_td-vqa": dict(task="vqa", method="clip_td", teachers=("clip",)),
    "clip_td-nlvr2": dict(task="nlvr2", method="clip_td", teachers=("clip",)),  # 2 images per example
    "clip_td-vcr": dict(task="vcr", method="clip_td", teachers=("clip",)),  # 4 texts per example
    "mad-snli_ve": dict(task="snli_ve", method="mad", teachers=("vision", "text")),
    "dide-nlvr2": dict(task="nlvr2", method="dide", teachers=("fusion",), student={"kind": "dual"}),
}


def _setup(case: str, **sections):
    cfg = parse_config(tiny_tree(**CASES[case], data={"max_train": 8}, **sections), "t")
    data = load_data(cfg.data)
    return cfg, data, build_models(cfg, data)


def _live(method, examples):
    store = ImageStore()
    return method.targets_for(examples, [[store(p) for p in ex.images] for ex in examples])


def _assert_same(cached, live):
    assert set(cached) == set(live)
    for teacher, fields in live.items():
        assert set(cached[teacher]) == set(fields), teacher
        for field, value in fields.items():
            got = cached[teacher][field]
            assert got.dtype == value.dtype and got.shape == value.shape, field
            # computed in batches of another composition: equal up to float32 rounding of BLAS kernels
            assert torch.allclose(got.float(), value.float(), rtol=1e-5, atol=1e-6), field


def _build(folder: Path, method, examples, **kw):
    return ensure_cache(folder, method, examples, fp16=kw.pop("fp16", False), key_parts={}, batch_size=3, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_lookup_equals_the_live_teachers(case, tmp_path):
    cfg, data, built = _setup(case, cache={"enabled": True, "dir": str(tmp_path)})
    cache = open_teacher_cache(cfg, data, built.method)
    examples = data.train[:5]
    _assert_same(cache.lookup(examples), _live(built.method, examples))
    stored = {name for shard in cache.shards for name in shard.arrays}
    assert not {n for n in stored if n.endswith(("image_token_embeds", "text_word_embeds"))}  # derived, not stored
    images = {p for ex in data.train for p in ex.images}
    n_images = len(images) if case != "dide-nlvr2" else 0  # a fusion teacher's targets are all per example
    assert len(cache.stores["images"]) == n_images and len(cache.rows) == len(data.train)


def test_two_questions_on_one_image_read_one_image_row_and_a_shared_text_is_stored_once(tmp_path):
    _, data, built = _setup("clip_td-vqa")
    a, b, c = data.train[:3]
    same_image = replace(b, images=a.images)  # another question on a's picture
    same_text = replace(c, texts=a.texts)  # a's question on another picture
    cache = _build(tmp_path, built.method, [a, same_image])
    assert len(cache.stores["images"]) == 1 and len(cache.stores["texts"]) == 2 and len(cache.rows) == 2
    _assert_same(cache.lookup([a, same_image]), _live(built.method, [a, same_image]))
    cache = _build(tmp_path, built.method, [a, same_image, same_text])  # adds one image, no text
    assert len(cache.stores["images"]) == 2 and len(cache.stores["texts"]) == 2 and len(cache.rows) == 3
    _assert_same(cache.lookup([same_text, a]), _live(built.method, [same_text, a]))


def test_a_changed_image_file_gets_a_new_row_never_the_stale_one(tmp_path):
    _, data, built = _setup("clip_td-vqa")
    a, b = data.train[:2]
    picture = tmp_path / "picture.png"
    shutil.copyfile(a.images[0], picture)
    ex = replace(a, images=(picture,))
    cache = _build(tmp_path / "cache", built.method, [ex])
    before = cache.refs(ex)
    shutil.copyfile(b.images[0], picture)  # same path, other bytes
    after = TeacherCache(tmp_path / "cache").refs(ex)
    assert after.images != before.images and after.example != before.example
    cache = _build(tmp_path / "cache", built.method, [ex])
    assert len(cache.stores["images"]) == 2 and len(cache.rows) == 2
    _assert_same(cache.lookup([ex]), _live(built.method, [ex]))


def _losses(built, batch, targets):
    out = built.student(batch.student)
    return {k: float(v.detach()) for k, v in built.method.losses(out, batch, targets).items()}


@pytest.mark.parametrize(("storage", "bound"), [({"fp16": True}, 1e-3), ({"int8": True}, 1e-2)])
def test_compressed_storage_changes_the_losses_little(storage, bound, tmp_path):
    _, data, built = _setup("clip_td-vqa")
    loader = torch.utils.data.DataLoader(
        ExampleDataset(data.train), batch_size=8, collate_fn=collate_fn(built.processor, "vqa", data.builder.answers)
    )
    batch = next(iter(loader))
    exact = _build(tmp_path / "fp32", built.method, batch.examples).lookup(batch.examples)
    built.method.setup(built.student(batch.student), exact)
    small = _build(tmp_path / "small", built.method, batch.examples, **storage).lookup(batch.examples)
    a, b = _losses(built, batch, exact), _losses(built, batch, small)
    assert a.keys() == b.keys() and len(a) == 2
    for k in a:
        assert abs(a[k] - b[k]) <= bound * abs(a[k]), (k, a[k], b[k])


def test_int8_round_trip_is_within_half_a_step_per_token():
    x = torch.randn(5, 7, 64) * torch.logspace(-3, 2, 7).view(1, 7, 1)  # tokens of very different scales
    x[0, 0] = 0.0  # an all-zero token
    stored = encode("t/f", x, "int8")
    assert stored["t/f"].dtype == torch.int8 and stored["t/f@scale"].shape == (5, 7)
    back = decode({k: v.numpy() for k, v in stored.items()}, "cpu")["t/f"]
    step = x.abs().amax(-1, keepdim=True) / 127
    assert bool(((back - x).abs() <= step / 2 + 1e-7 * x.abs()).all()) and bool((back[0, 0] == 0).all())
    vectors = torch.randn(5, 16)  # one vector per row (embeddings, logits): never quantised
    assert encode("t/v", vectors, "int8")["t/v"].dtype == torch.float32


def test_a_cache_of_the_old_format_is_another_key_and_never_read(tmp_path):
    cfg, data, built = _setup("clip_td-vqa", cache={"enabled": True, "dir": str(tmp_path)})
    teachers = {name: t.fingerprint() for name, t in sorted(built.method.teachers.items())}
    # The key before issue 15 (vldistill.training.cache.cache_key at 6027893): no format, a bool fp16.
    old = {"teachers": teachers, "settings": built.method.cache_settings(), "data": data.fingerprint, "fp16": False}
    old_key = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:24]
    folder = tmp_path / old_key
    folder.mkdir()
    save_file({"clip/image_tokens": torch.zeros(1, 1, 4, 32)}, str(folder / "shard-00000000-r0-000000.safetensors"))
    (folder / "meta.json").write_text(json.dumps({"key": old, "shards": ["shard-00000000-r0-000000.safetensors"]}))
    before = sorted(p.name for p in folder.iterdir())
    cache = open_teacher_cache(cfg, data, built.method)
    assert cache.folder != folder and len(cache.rows) == len(data.train)
    assert sorted(p.name for p in folder.iterdir()) == before
    with pytest.raises(DataError, match="storage format 1"):
        TeacherCache(folder)


def test_rounded_attention_rows_are_rescaled_to_sum_to_one():
    rows = torch.softmax(torch.randn(3, 2, 5, 145) * 0.01, dim=-1)  # near uniform: the worst case for rounding
    rows[0, 0, 4] = 0.0  # a padded query: stays zero
    for storage in ("float16", "int8"):
        stored = {k: v.numpy() for k, v in encode("vilt/t2i", rows, storage).items()}
        back = decode(stored, "cpu", frozenset({"t2i"}))["vilt/t2i"]
        sums = back.sum(-1)
        assert torch.allclose(sums[sums > 0], torch.ones(()), atol=1e-6) and bool((back[0, 0, 4] == 0).all())
        assert torch.allclose(back, rows, atol=1e-4)
    exact = decode({k: v.numpy() for k, v in encode("vilt/t2i", rows, "float32").items()}, "cpu", frozenset({"t2i"}))
    assert torch.equal(exact["vilt/t2i"], rows)  # float32 rows are returned as stored
