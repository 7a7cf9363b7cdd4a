"""Every method from a config: runs, trains what it should, freezes teachers, cache == live."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.data.loader import ExampleDataset, collate_fn
from vldistill.errors import ConfigError
from vldistill.training.cache import open_teacher_cache
from vldistill.training.experiment import build_models, load_data
from vldistill.training.plan import make_plan
from vldistill.training.train import train

CASES = {
    "none": dict(task="vqa", method="none"),
    "kd": dict(task="vqa", method="kd", teachers=("clip",)),
    "clip_td": dict(task="vqa", method="clip_td", teachers=("clip",)),
    "mad": dict(task="snli_ve", method="mad", teachers=("vision", "text")),
    "dide": dict(task="snli_ve", method="dide", teachers=("fusion",), student={"kind": "dual"}),
}


def _first_batch(cfg):
    data = load_data(cfg.data)
    built = build_models(cfg, data)
    loader = torch.utils.data.DataLoader(
        ExampleDataset(data.train),
        batch_size=6,
        collate_fn=collate_fn(built.processor, data.task, data.builder.answers or None),
    )
    batch = next(iter(loader))
    out = built.student(batch.student, output_cross_attention=built.method.needs_cross_attention)
    targets = built.method.targets(batch)
    built.method.setup(out, targets)
    return data, built, batch, targets


@pytest.mark.parametrize("name", list(CASES))
def test_each_method_runs_from_a_config(name, tmp_path):
    case = dict(CASES[name])
    cfg = parse_config(tiny_tree(**case), "test")
    summary = train(cfg, tmp_path, show_progress=False)
    assert summary["method"] == name
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    terms = [k for k in row if k.startswith("train_")]
    expected = {
        "none": {"train_task"},
        "kd": {"train_task", "train_feature/clip/image", "train_feature/clip/text"},
        "clip_td": {"train_task", "train_feature/clip/image", "train_feature/clip/text"},
        "mad": {"train_task", "train_feature/vision/image", "train_feature/text/text"},
        "dide": {"train_task", "train_attention/t2i", "train_attention/i2t", "train_logits/soft_labels"},
    }[name]
    assert set(terms) == expected
    assert all(torch.isfinite(torch.tensor(row[k])) and row[k] >= 0 for k in terms if k != "train_task")
    metric = summary["primary_metric"]
    assert 0 <= summary["eval"]["eval"][metric] <= 100
    assert (tmp_path / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["clip_td", "mad", "dide"])
def test_teachers_frozen_students_and_projections_trained(name):
    cfg = parse_config(tiny_tree(**CASES[name]), "test")
    _, built, batch, targets = _first_batch(cfg)
    out = built.student(batch.student, output_cross_attention=built.method.needs_cross_attention)
    terms = built.method.losses(out, batch, targets)
    assert terms, "the method must add distillation terms"
    sum(terms.values()).backward()
    for teacher in built.method.teachers.values():
        assert not teacher.training
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    student_grads = [p.grad for p in built.student.parameters() if p.grad is not None]
    assert student_grads and any(float(g.abs().sum()) > 0 for g in student_grads)
    for proj in built.method.projections.values():
        assert float(proj.weight.grad.abs().sum()) > 0
    # teachers are not part of what the optimizer or a checkpoint sees
    names = [n for n, _ in built.method.named_parameters()]
    assert all(n.startswith("projections.") for n in names)


def test_cached_and_live_teacher_give_the_same_loss(tmp_path):
    cfg = parse_config(tiny_tree(**CASES["clip_td"], cache={"enabled": True, "dir": str(tmp_path)}), "test")
    data, built, batch, live = _first_batch(cfg)
    cache = open_teacher_cache(cfg, data, built.method)
    cached = cache.lookup(batch.examples)
    assert set(cached) == set(live)
    # The cache was computed in batches of another size: equal up to float32 rounding of BLAS
    # kernels that depend on the batch shape, no more.
    for teacher, fields in live.items():
        for field, value in fields.items():
            assert cached[teacher][field].dtype == value.dtype, field
            assert torch.allclose(cached[teacher][field].float(), value.float(), rtol=1e-5, atol=1e-6), field
    out = built.student(batch.student)
    a = built.method.losses(out, batch, live)
    b = built.method.losses(out, batch, cached)
    assert a.keys() == b.keys()
    for k in a:
        assert float(a[k].detach()) == pytest.approx(float(b[k].detach()), rel=1e-5, abs=1e-7), k


def test_fp16_cache_is_close(tmp_path):
    cfg = parse_config(tiny_tree(**CASES["clip_td"], cache={"enabled": True, "dir": str(tmp_path), "fp16": True}), "t")
    data, built, batch, live = _first_batch(cfg)
    cached = open_teacher_cache(cfg, data, built.method).lookup(batch.examples)
    out = built.student(batch.student)
    a = built.method.losses(out, batch, live)
    b = built.method.losses(out, batch, cached)
    for k in a:
        assert abs(float(a[k].detach()) - float(b[k].detach())) < 1e-2 * max(1.0, abs(float(a[k].detach())))


def test_cache_hit_miss_and_staleness(tmp_path, monkeypatch):
    cfg = parse_config(tiny_tree(**CASES["clip_td"], cache={"enabled": True, "dir": str(tmp_path)}), "test")
    data, built, _, _ = _first_batch(cfg)
    # The cache computes each example's pair part (example_targets) and each distinct image once.
    calls, images = [], []
    real, real_images = built.method.example_targets, built.method.image_targets
    monkeypatch.setattr(built.method, "example_targets", lambda ex, im, e: calls.append(len(ex)) or real(ex, im, e))
    monkeypatch.setattr(built.method, "image_targets", lambda t, im: images.append(len(im)) or real_images(t, im))
    first = open_teacher_cache(cfg, data, built.method)  # miss: computes every row
    assert sum(calls) == len(data.train)
    assert sum(images) == len({p for ex in data.train for p in ex.images})
    calls.clear()
    images.clear()
    again = open_teacher_cache(cfg, data, built.method)  # hit: computes nothing
    assert calls == images == [] and again.folder == first.folder and len(again.rows) == len(data.train)
    # more examples of the same split: only the missing rows are computed
    bigger = load_data(parse_config(tiny_tree(**CASES["clip_td"], data={"max_train": 30}), "t").data)
    open_teacher_cache(cfg, bigger, built.method)
    assert sum(calls) == len(bigger.train) - len(data.train)
    # another teacher (other weights) or other data files -> another key, never the stale cache
    torch.manual_seed(123)
    with torch.no_grad():
        next(iter(built.method.teachers["clip"].parameters())).add_(1.0)
    built.method.teachers["clip"]._weights_digest = None
    other = open_teacher_cache(cfg, data, built.method)
    assert other.folder != first.folder
    data.fingerprint = "changed-annotation-files"
    assert open_teacher_cache(cfg, data, built.method).folder not in (first.folder, other.folder)


def test_method_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="kind clip"):
        build_models(
            parse_config(tiny_tree("vqa", "clip_td", ("vision",)), "t"), load_data(parse_config(tiny_tree(), "t").data)
        )
    cfg = parse_config(tiny_tree("snli_ve", "mad", ("vision",), method_options={"selection": "teacher_relevance"}), "t")
    with pytest.raises(ConfigError, match="joint image-text space"):
        make_plan(cfg)
    cfg = parse_config(tiny_tree("snli_ve", "dide", ("fusion",)), "t")  # fusion student: no cross-attention
    with pytest.raises(ConfigError, match="dual"):
        make_plan(cfg)


def test_plan_shows_links_selection_and_weights():
    plan = make_plan(parse_config(tiny_tree(**CASES["clip_td"]), "test"))
    terms = [link["term"] for link in plan.links]
    assert terms == ["feature/clip/image", "feature/clip/text"]
    image = plan.links[0]
    # ratio 0.5 of the 16 student patches (4x4 grid at 32 px, patch 8)
    assert image["selected_min"] == image["selected_max"] == 8
    assert image["projection"] == "Linear(32->32)"
    assert plan.weights["kind"] == "teacher_confidence"
    # normalised to mean 1 over the batch (method.weight_normalize, default); the floor 0.1 scales with it
    assert 0 < plan.weights["min"] <= 1.0 <= plan.weights["max"] and plan.weights["mean"] == pytest.approx(
        1.0, abs=1e-4
    )
    assert plan.parameters["teachers (frozen)"] > 0 and plan.parameters["projections"] == 2 * (32 * 32 + 32)


def test_vqa_teacher_logits_are_matched_to_student_answers_by_name():
    from types import SimpleNamespace

    from vldistill.distill.config import MethodConfig
    from vldistill.distill.methods import Method

    teacher = SimpleNamespace(kind="fusion", answers=["yes", "no", "2", "red"])
    method = Method(MethodConfig(), {"vilt": teacher}, "vqa", answers=["red", "blue", "yes"])
    out = SimpleNamespace(logits=torch.zeros(1, 3))
    method._map_teacher_logits(out, {"vilt": {"logits": torch.zeros(1, 4)}})
    mapped = method.teacher_logits("vilt", torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # red <- column 3, blue is unknown to the teacher (probability 0), yes <- column 0
    assert mapped.tolist() == [[4.0, -1e4, 1.0]]
    lonely = Method(MethodConfig(), {"vilt": SimpleNamespace(kind="fusion", answers=["cat"])}, "vqa", answers=["dog"])
    with pytest.raises(ConfigError, match="shares no answer"):
        lonely._map_teacher_logits(out, {"vilt": {"logits": torch.zeros(1, 1)}})
    ve = Method(MethodConfig(), {"vilt": SimpleNamespace(kind="fusion", answers=None)}, "snli_ve")
    with pytest.raises(ConfigError, match="has 2 classes, the student 3"):
        ve._map_teacher_logits(out, {"vilt": {"logits": torch.zeros(1, 2)}})


def test_coarser_teacher_grid_pools_the_student_onto_it():
    from vldistill.distill.features import comparison_grid

    assert comparison_grid((2, 2), (4, 4)) == (2, 2)
    assert comparison_grid((7, 7), (4, 4)) == (4, 4)
    tree = tiny_tree("snli_ve", "mad", ("vision",))
    tree["method"]["teachers"]["vision"] = {**tree["method"]["teachers"]["vision"], "image_size": 16}  # 2x2 map
    plan = make_plan(parse_config(tree, "t"))
    image = plan.links[0]
    assert image["student"].endswith("compared on 2x2") and image["compared"].endswith("x4x32")
    assert image["selected_max"] <= 4


def test_a_method_with_zero_weights_trains_exactly_like_the_baseline(tmp_path):
    """The distillation plumbing (teachers, projections, extra optimizer state) changes nothing by itself."""
    from safetensors.torch import load_file

    base = tiny_tree("snli_ve", "none")
    zero = tiny_tree("snli_ve", "mad", ("vision", "text"), method_options={"feature_weight": 0.0})
    train(parse_config(base, "t"), tmp_path / "none", show_progress=False)
    train(parse_config(zero, "t"), tmp_path / "zero", show_progress=False)
    a = load_file(str(tmp_path / "none" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "zero" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
