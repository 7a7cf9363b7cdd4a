"""The feature methods' switches (issue 13): weight normalisation, token count, per-modality weights,
target normalisation, the distilled student layer, and the VQA soft-label scale."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.data.loader import ExampleDataset, ImageStore, collate_fn
from vldistill.distill.config import MethodConfig
from vldistill.distill.features import CLIPTargetedDistillation, student_tokens
from vldistill.distill.losses import feature_distance, weighted_feature_loss
from vldistill.distill.methods import Method
from vldistill.distill.normalize import statistics_sample, token_moments
from vldistill.errors import ConfigError
from vldistill.models.heads import task_loss
from vldistill.training.cache import open_teacher_cache
from vldistill.training.experiment import build_models, load_data
from vldistill.training.plan import make_plan
from vldistill.training.train import train

E2 = math.exp(2.0)


def _first_batch(tree: dict, batch_size: int = 6):
    cfg = parse_config(tree, "test")
    data = load_data(cfg.data)
    built = build_models(cfg, data)
    loader = torch.utils.data.DataLoader(
        ExampleDataset(data.train),
        batch_size=batch_size,
        collate_fn=collate_fn(built.processor, data.task, data.builder.answers or None),
    )
    batch = next(iter(loader))
    built.student.eval()
    out = built.student(batch.student, output_cross_attention=built.method.needs_cross_attention)
    targets = built.method.targets(batch)
    built.method.setup(out, targets)
    return cfg, data, built, batch, out, targets


# ----------------------------------------------------------------------------- 1. VQA soft labels


def test_vqa_soft_label_term_is_the_task_loss_against_the_teachers_probabilities() -> None:
    teacher = SimpleNamespace(kind="fusion", answers=["yes", "no", "2"])
    method = Method(MethodConfig(), {"vilt": teacher}, "vqa", answers=["no", "yes"])
    student = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    teacher_logits = torch.tensor([[0.0, 1.0, 3.0], [-2.0, 0.0, 1.0]])
    method._map_teacher_logits(SimpleNamespace(logits=student), {"vilt": {"logits": teacher_logits}})
    soft = method.soft_label_loss("vilt", student, teacher_logits)
    # student answers [no, yes] <- teacher columns [1, 0]: targets sigmoid([[1, 0], [0, -2]])
    expected = task_loss("vqa", student, torch.sigmoid(torch.tensor([[1.0, 0.0], [0.0, -2.0]])))
    assert float(soft) == pytest.approx(float(expected), rel=1e-6)
    # by hand: BCE summed over the 2 answers, averaged over the 2 examples
    s1 = math.log1p(math.exp(0.5)) - 0.5 * torch.sigmoid(torch.tensor(1.0)).item() + math.log1p(math.exp(-1)) + 0.5
    s2 = math.log1p(math.exp(2)) - 2 * 0.5 + math.log(2)
    assert float(soft) == pytest.approx((s1 + s2) / 2, rel=1e-5)


# ------------------------------------------------------------------------------- 2. weights


def _weighting_case(weighting: str, normalize: bool | None) -> torch.Tensor:
    options = {} if normalize is None else {"weight_normalize": normalize}
    cfg = MethodConfig(name="clip_td", weighting=weighting, **options)
    method = CLIPTargetedDistillation(cfg, {"clip": SimpleNamespace(kind="clip")}, "snli_ve")
    out = SimpleNamespace(logits=torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    batch = SimpleNamespace(
        targets=torch.tensor([0, 1]), examples=[SimpleNamespace(gold_candidate=0), SimpleNamespace(gold_candidate=1)]
    )
    targets = {"clip": {"candidate_logits": torch.tensor([[2.0, 0.0], [2.0, 0.0]]), "candidate_mask": torch.ones(2, 2)}}
    targets["clip"]["candidate_mask"] = targets["clip"]["candidate_mask"].bool()
    return method.weights(out, batch, targets)


def test_confidence_weights_have_mean_one_by_default() -> None:
    # teacher: softmax([2, 0]) at gold 0 and 1 = [0.880797, 0.119203], mean 0.5 -> [1.761594, 0.238406]
    default = _weighting_case("teacher_confidence", None)
    assert torch.allclose(default, torch.tensor([2 * E2 / (E2 + 1), 2 / (E2 + 1)]))
    assert torch.allclose(_weighting_case("teacher_confidence", False), torch.tensor([E2 / (E2 + 1), 1 / (E2 + 1)]))
    # student: softmax([2, 0, 0])[0] = e^2 / (e^2 + 2) = 0.786986, softmax([0, 0, 0])[1] = 1/3
    raw = torch.tensor([E2 / (E2 + 2), 1 / 3])
    assert torch.allclose(_weighting_case("student_confidence", False), raw)
    assert torch.allclose(_weighting_case("student_confidence", None), raw / raw.mean())
    assert float(_weighting_case("student_confidence", None).mean()) == pytest.approx(1.0)


def test_clip_td_weights_on_a_real_batch_average_one() -> None:
    plan = make_plan(parse_config(tiny_tree("vqa", "clip_td", ("clip",)), "t"))
    assert plan.weights["kind"] == "teacher_confidence"
    assert plan.weights["mean"] == pytest.approx(1.0, abs=1e-4) and plan.weights["min"] < 1 < plan.weights["max"]


# ---------------------------------------------------------------------------- 3. token count


@pytest.mark.parametrize(
    ("options", "kept"),
    [({"top_k": 3}, 3), ({"ratio": 0.25}, 4), ({}, 8)],  # of 16 student patches (4x4 grid)
)
def test_top_k_alone_ratio_alone_and_neither_work(options: dict, kept: int) -> None:
    plan = make_plan(parse_config(tiny_tree("vqa", "clip_td", ("clip",), method_options=options), "t"))
    image = plan.links[0]
    assert image["selected_min"] == image["selected_max"] == kept
    assert (plan.method["top_k"], plan.method["ratio"]) == (
        options.get("top_k"),
        None if "top_k" in options else options.get("ratio", 0.5),
    )


def test_top_k_and_ratio_together_are_a_config_error_naming_both() -> None:
    tree = tiny_tree("vqa", "clip_td", ("clip",), method_options={"top_k": 3, "ratio": 0.5})
    with pytest.raises(ConfigError, match=r"method\.top_k \(3\) and method\.ratio \(0\.5\) are both set"):
        parse_config(tree, "t")


# ---------------------------------------------------------------------- 4. per-modality weights


def test_image_and_text_weights_scale_their_own_terms() -> None:
    tree = tiny_tree("snli_ve", "kd", ("clip",), method_options={"feature_weight": 2.0})
    cfg, _, built, batch, out, targets = _first_batch(tree)
    method = built.method
    base = {k: float(v.detach()) for k, v in method.losses(out, batch, targets).items()}
    assert set(base) == {"feature/clip/image", "feature/clip/text"}
    method.cfg = cfg.method.model_copy(update={"image_weight": 3.0, "text_weight": 0.5})
    scaled = {k: float(v.detach()) for k, v in method.losses(out, batch, targets).items()}
    assert scaled["feature/clip/image"] == pytest.approx(3.0 * base["feature/clip/image"], rel=1e-6)
    assert scaled["feature/clip/text"] == pytest.approx(0.5 * base["feature/clip/text"], rel=1e-6)
    method.cfg = cfg.method.model_copy(update={"text_weight": 0.0})
    assert set(method.losses(out, batch, targets)) == {"feature/clip/image"}  # weight 0: not computed


# ----------------------------------------------------------------------- 5. target normalisation


def test_layernorm_targets_are_normalised_per_token() -> None:
    tree = tiny_tree("snli_ve", "kd", ("clip",), method_options={"target_norm": "layernorm", "feature_loss": "l2"})
    _, _, built, batch, out, targets = _first_batch(tree)
    method = built.method
    terms = method.losses(out, batch, targets)
    for pair in method.token_pairs(out, batch, targets):
        expected_teacher = F.layer_norm(pair.raw_teacher.float(), pair.raw_teacher.shape[-1:], eps=1e-5)
        assert torch.allclose(pair.teacher, expected_teacher, atol=1e-6)
        by_hand = weighted_feature_loss(
            feature_distance(pair.student, expected_teacher, pair.selected, "l2").view(6, -1).mean(1), torch.ones(6)
        )
        assert float(terms[f"feature/{pair.term}"].detach()) == pytest.approx(float(by_hand.detach()), rel=1e-6)


def test_standardize_statistics_from_live_teachers_and_from_the_cache_agree(tmp_path) -> None:
    tree = tiny_tree("snli_ve", "mad", ("vision", "text"), method_options={"target_norm": "standardize"})
    cfg, data, built, batch, out, targets = _first_batch(tree)
    method = built.method
    with pytest.raises(RuntimeError, match="never fitted"):
        method.losses(out, batch, targets)
    method.prepare(data.train, batch_size=8)  # live: 24 examples < 64 batches of 8, so all of them
    live = {k: (m.mean.clone(), m.std.clone(), int(m.count)) for k, m in method.target_norms.items()}
    images = [[ImageStore()(p) for p in ex.images] for ex in data.train]
    expected = token_moments([method.targets_for(data.train, images)])
    assert (
        live["vision_image"][2] == expected["vision/image"][2] == 24 * 16
    )  # 24 examples x 4x4 tokens (32 px, patch 8)
    assert torch.allclose(live["vision_image"][0], expected["vision/image"][0], atol=1e-5)
    assert torch.allclose(live["text_text"][1], expected["text/text"][1].clamp(min=1e-6), atol=1e-5)
    cache_cfg = parse_config({**tree, "cache": {"enabled": True, "dir": str(tmp_path)}}, "t")
    cache = open_teacher_cache(cache_cfg, data, method)
    method.prepare(data.train, cache, batch_size=8)
    assert list(cache.folder.glob("target-stats-*.safetensors"))
    for key, module in method.target_norms.items():
        assert int(module.count) == live[key][2]
        assert torch.allclose(module.mean, live[key][0], atol=1e-5) and torch.allclose(
            module.std, live[key][1], atol=1e-5
        )
    # the normalised targets are (t - mean) / std of the raw ones
    for pair in method.token_pairs(out, batch, targets):
        norm = method.target_norms[pair.term.replace("/", "_")]
        assert torch.allclose(pair.teacher, (pair.raw_teacher - norm.mean) / norm.std, atol=1e-5)


def test_standardize_statistics_are_checkpointed_and_restored_on_resume(tmp_path) -> None:
    tree = tiny_tree(
        "snli_ve",
        "mad",
        ("vision", "text"),
        method_options={"target_norm": "standardize"},
        cache={"enabled": True, "dir": str(tmp_path / "cache")},
        train={"checkpoint_every": 1, "keep_checkpoints": 5},
    )
    cfg = parse_config(tree, "t")
    train(cfg, tmp_path / "run", show_progress=False)
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-00000001", "step-00000002", "step-00000003"]
    weights = load_file(str(checkpoints[0] / "weights.safetensors"))
    data = load_data(cfg.data)
    built = build_models(cfg, data)
    cache = open_teacher_cache(cfg, data, built.method)
    expected = token_moments([cache.lookup(statistics_sample(data.train, 64 * cfg.train.batch_size))])
    for key, stats_key in (("vision_image", "vision/image"), ("text_text", "text/text")):
        prefix = f"model.method.target_norms.{key}"
        assert torch.allclose(weights[f"{prefix}.mean"], expected[stats_key][0], atol=1e-6)
        assert int(weights[f"{prefix}.count"]) == expected[stats_key][2]
    # Resume from step 2 after the stored statistics changed: the checkpoint's copy is what counts.
    finished = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    shutil.rmtree(checkpoints[-1])
    shutil.rmtree(tmp_path / "run" / "final")
    (stats_file,) = cache.folder.glob("target-stats-*.safetensors")
    save_file(
        {k: v + 1 for k, v in load_file(str(stats_file)).items()}, str(stats_file), metadata=_metadata(stats_file)
    )
    train(cfg, tmp_path / "run", resume=True, show_progress=False)
    resumed = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(resumed[k], finished[k]) for k in finished)


def _metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


# --------------------------------------------------------------------------- 6. student layer


def test_student_layer_picks_transformers_hidden_states() -> None:
    tree = tiny_tree("snli_ve", "kd", ("clip",), student={"num_layers": 2})
    _, _, built, batch, out, _ = _first_batch(tree)
    vilt = built.student.model.vilt
    assert len(out.text_hidden_states) == len(out.image_hidden_states) == 3  # embeddings + 2 layers
    text_last, image_last = student_tokens(out, -1)
    assert text_last is out.text_tokens and image_last is out.image_tokens
    # -1 is the model's output: layer 2's hidden state after ViLT's final LayerNorm
    assert torch.allclose(vilt.layernorm(out.text_hidden_states[2]), out.text_tokens, atol=1e-5)
    assert torch.allclose(vilt.layernorm(out.image_hidden_states[2]), out.image_tokens, atol=1e-5)
    # 0 is the embeddings: text embeddings + modality type 0; patch embeddings + modality type 1
    s = batch.student
    text0 = vilt.embeddings.text_embeddings(input_ids=s.input_ids) + vilt.embeddings.token_type_embeddings.weight[0]
    assert torch.allclose(student_tokens(out, 0)[0], text0, atol=1e-5)
    patches = built.student.image_embeddings(s.pixel_values)[0][:, 1:] + vilt.embeddings.token_type_embeddings.weight[1]
    assert torch.allclose(student_tokens(out, 0)[1], patches, atol=1e-5)
    assert not torch.allclose(student_tokens(out, 1)[0], student_tokens(out, 2)[0])
    with pytest.raises(ConfigError, match=r"student_layer 3, but the student has 2 layers"):
        student_tokens(out, 3)
    with pytest.raises(ConfigError, match="fusion student"):
        student_tokens(SimpleNamespace(text_hidden_states=None, image_hidden_states=None), 1)


def test_the_chosen_layer_is_what_gets_distilled() -> None:
    tree = tiny_tree("snli_ve", "kd", ("clip",), method_options={"student_layer": 1}, student={"num_layers": 2})
    _, _, built, batch, out, targets = _first_batch(tree)
    method = built.method
    terms = method.losses(out, batch, targets)
    pair = next(p for p in method.token_pairs(out, batch, targets) if p.term == "clip/image")
    assert torch.allclose(pair.student, method.projections["clip_image"](out.image_hidden_states[1]))
    by_hand = feature_distance(pair.student, pair.teacher, pair.selected, "cosine").mean()
    assert float(terms["feature/clip/image"].detach()) == pytest.approx(float(by_hand.detach()), rel=1e-6)
    # the gradient reaches layer 1 but not layer 2 through this term
    terms["feature/clip/image"].backward()
    layers = built.student.model.vilt.encoder.layer
    assert float(layers[0].output.dense.weight.grad.abs().sum()) > 0
    assert layers[1].output.dense.weight.grad is None


def test_normalised_weights_take_the_same_updates_on_two_processes(tmp_path) -> None:
    """The batch mean is over the global batch (all-reduced), so DDP over two CPU processes = one process."""
    tree = tiny_tree("snli_ve", "mad", ("vision", "text"), train={"epochs": 1, "batch_size": 8})
    assert tree["method"].get("weight_normalize", True) and parse_config(tree, "t").method.weight_normalize
    config = tmp_path / "mad.yaml"
    config.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    runs = {
        "one": [sys.executable, "-m", "vldistill"],
        "two": [torchrun, "--nproc_per_node", "2", "--master_port", "29563", "-m", "vldistill"],
    }
    for name, prefix in runs.items():
        cmd = [*prefix, "train", str(config), "--out", str(tmp_path / name), "--no-progress"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
