"""DiDE's pre-training stage: negatives, loss values, training, the saved student, fine-tuning from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from tiny_configs import tiny_tree
from transformers import ViltConfig, ViltForImageAndTextRetrieval, ViltForQuestionAnswering, ViltImageProcessorPil
from typer.testing import CliRunner

from vldistill.cli import app
from vldistill.config import PRESETS_DIR, parse_config
from vldistill.distill.pretrain import (
    DidePretrainConfig,
    PretrainLossConfig,
    check_alignment,
    load_itm_teacher,
    load_pretrain_config,
    pretrain_dual,
    pretrain_losses,
)
from vldistill.distill.pretrain_data import (
    CaptionDataConfig,
    CaptionPair,
    PairCollator,
    caption_pairs,
    negative_partners,
)
from vldistill.errors import ConfigError
from vldistill.models.outputs import CrossModalAttention, FusionTeacherOutput, StudentOutput
from vldistill.models.processing import Processor
from vldistill.models.students import StudentConfig, build_student, load_student
from vldistill.models.teachers.factory import TeacherConfig
from vldistill.models.teachers.text import minilm_tokenizer
from vldistill.training.experiment import student_processor
from vldistill.training.train import train

SIZES = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
STUDENT = {"kind": "dual", **SIZES, "image_size": 32, "patch_size": 8}
TEACHER = {"kind": "fusion", "tiny": SIZES, "image_size": 32}


def _tree(**sections) -> dict:
    tree = {
        "name": "test-pretrain",
        "data": {"world_scale": 0.1, "styles": ["base"], "max_pairs": 24},
        "student": dict(STUDENT),
        "teacher": dict(TEACHER),
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
    }
    for key, value in sections.items():
        tree[key] = {**tree[key], **value}
    return tree


@pytest.fixture(scope="module")
def pairs() -> list[CaptionPair]:
    return caption_pairs(CaptionDataConfig(world_scale=0.1, styles=["base"], max_pairs=24), seed=0)


@pytest.fixture(scope="module")
def processor() -> Processor:
    return student_processor(StudentConfig(**STUDENT))


def _sharp_teacher():
    """A tiny random ITM teacher whose last-layer attention is far from uniform: something to learn."""
    torch.manual_seed(0)
    teacher = load_itm_teacher(TeacherConfig(**TEACHER))
    model = teacher.student.model
    with torch.no_grad():
        attention = model.vilt.encoder.layer[-1].attention.attention
        attention.query.weight.mul_(8)  # scores x 64: peaked attention
        attention.key.weight.mul_(8)
    return teacher


# ----------------------------------------------------------------------------------------- data


def test_negative_partners_skip_captions_of_the_same_image() -> None:
    assert negative_partners(["a", "a", "b", "c"], 1).tolist() == [[2], [2], [3], [0]]
    assert negative_partners(["a", "a", "b", "c"], 2).tolist() == [[2, 3], [2, 3], [3, 0], [0, 1]]
    with pytest.raises(ConfigError, match="captions of other images"):
        negative_partners(["a", "a", "b"], 2)


def test_each_image_gets_its_caption_then_a_caption_of_another_image(pairs, processor) -> None:
    # Pair 1 shows pair 0's image with another caption: it must not serve as pair 0's negative.
    batch_pairs = [pairs[0], CaptionPair(pairs[0].image, "a second caption", pairs[0].source, 0), *pairs[1:4]]
    batch = PairCollator(processor, processor, negatives=1)(batch_pairs)
    assert batch.partners.tolist() == [[2], [2], [3], [4], [0]]
    expected = [t for i, p in enumerate(batch_pairs) for t in (p.caption, batch_pairs[batch.partners[i, 0]].caption)]
    ids, mask, _ = processor.tokenize(expected)
    assert torch.equal(batch.student.input_ids, ids) and torch.equal(batch.student.attention_mask, mask)
    assert (batch.student.task, batch.student.n_images, batch.student.n_texts) == ("vcr", 1, 2)
    assert all(batch_pairs[i].image != batch_pairs[j].image for i, (j,) in enumerate(batch.partners.tolist()))
    assert batch.student.pixel_values.shape == (5, 3, 32, 32)


# ----------------------------------------------------------------------------------------- loss


def _maps(t2i_rows: list[list[float]]) -> CrossModalAttention:
    """One image with 2 captions -> 2 views, 1 head, 3 text positions (the last one padded), 2 patches."""
    t2i = torch.tensor(t2i_rows).view(2, 1, 3, 2)
    i2t = torch.tensor([[0.2, 0.8, 0.0], [0.6, 0.4, 0.0]] * 2).view(2, 1, 2, 3)
    text_mask = torch.tensor([[True, True, False]] * 2)
    return CrossModalAttention(t2i, i2t, text_mask, torch.ones(2, 2, dtype=torch.bool))


def _student(cross: CrossModalAttention, logits: torch.Tensor) -> StudentOutput:
    n = cross.text_mask.shape[0]
    return StudentOutput(
        logits,
        torch.zeros(n, 3, 4),
        cross.text_mask,
        torch.zeros(n, 3, dtype=torch.long),
        torch.zeros(n, 2, 4),
        cross.image_mask,
        (1, 2),
        torch.zeros(n, 4),
        cross_attention=cross,
    )


def test_losses_are_zero_when_the_student_matches_the_teacher_on_real_positions() -> None:
    rows = [[0.5, 0.5], [0.1, 0.9], [0.0, 0.0], [0.3, 0.7], [1.0, 0.0], [0.0, 0.0]]
    logits = torch.tensor([[2.0, -1.0]])
    teacher = FusionTeacherOutput(logits, _maps(rows))
    student_rows = [r if i % 3 < 2 else [0.9, 0.1] for i, r in enumerate(rows)]  # padded queries differ
    terms = pretrain_losses(_student(_maps(student_rows), logits.clone()), teacher, PretrainLossConfig())
    assert set(terms) == {"attention/t2i", "attention/i2t", "itm"}
    assert all(float(v) == pytest.approx(0.0, abs=1e-7) for v in terms.values())  # float32 rounding only


def test_loss_values_by_hand() -> None:
    rows = [[0.5, 0.5], [0.1, 0.9], [0.0, 0.0], [0.3, 0.7], [1.0, 0.0], [0.0, 0.0]]
    teacher = FusionTeacherOutput(torch.tensor([[0.0, math.log(3)]]), _maps(rows))
    student_rows = [[0.25, 0.75], *rows[1:]]  # one of the 4 real text queries differs
    cfg = PretrainLossConfig(attention_weight=2.0, itm_loss="sigmoid")
    terms = pretrain_losses(_student(_maps(student_rows), torch.tensor([[0.0, math.log(3)]])), teacher, cfg)
    # KL([.5, .5] || [.25, .75]) = .5 ln(4/3) = 0.1438, averaged over 4 real queries, times 2.
    assert float(terms["attention/t2i"]) == pytest.approx(2 * 0.5 * math.log(4 / 3) / 4, abs=1e-6)
    assert float(terms["attention/i2t"]) == 0.0
    # sigmoid: BCE of each logit against its own sigmoid = the targets' entropy: (ln 2 + H(.75)) / 2.
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(terms["itm"]) == pytest.approx((math.log(2) + entropy) / 2, abs=1e-6)


# ------------------------------------------------------------------------------------- training


def test_loss_decreases_on_a_fixed_batch_and_the_teacher_stays_frozen(pairs, processor) -> None:
    teacher = _sharp_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = PairCollator(processor, teacher.processor, negatives=1)(pairs[:8])
    torch.manual_seed(0)
    student = build_student(StudentConfig(**STUDENT), "vcr", 1).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        target = teacher(batch.teacher)
        out = student(batch.student, output_cross_attention=True)
        check_alignment(batch, out, target)
        loss = sum(pretrain_losses(out, target, PretrainLossConfig()).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] > 0.1 and losses[-1] < 0.5 * losses[0], losses
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_a_student_whose_grid_differs_from_the_teachers_is_refused(pairs, processor) -> None:
    teacher = load_itm_teacher(TeacherConfig(**TEACHER))
    batch = PairCollator(processor, teacher.processor, negatives=1)(pairs[:2])
    student = build_student(StudentConfig(**{**STUDENT, "patch_size": 16}), "vcr", 1)
    with pytest.raises(ConfigError, match="2 heads x 4 image tokens, teacher 2 x 16"):
        check_alignment(batch, student(batch.student, output_cross_attention=True), teacher(batch.teacher))


def test_pretrain_through_the_cli_then_fine_tune_from_the_saved_student(tmp_path) -> None:
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(_tree()))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["pretrain", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["pairs"], summary["steps"]) == (24, 3)
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ("attention/t2i", "attention/i2t", "itm"))
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no partial folder left

    # The same seed gives the same student.
    again = pretrain_dual(load_pretrain_config(config), tmp_path / "again", show_progress=False)
    weights = load_file(str(out / "final" / "model.safetensors"))
    same = load_file(str(Path(again["final"]) / "model.safetensors"))
    assert weights.keys() == same.keys() and all(torch.equal(weights[k], same[k]) for k in weights)

    # A new task keeps the towers and the fusion MLP and gets a fresh head.
    pretrained = load_student(out / "final")
    assert pretrained.task == "vcr"
    snli = build_student(StudentConfig(kind="dual", pretrained=str(out / "final")), "snli_ve", 3)
    state, kept = snli.state_dict(), pretrained.state_dict()
    towers = [k for k in kept if k.split(".")[0] in ("vision_model", "text_model", "fusion")]
    assert len(towers) > 20 and all(torch.equal(state[k], kept[k]) for k in towers)
    assert snli.head[-1].out_features == 3 and "head.weight" not in state

    cfg = parse_config(tiny_tree("snli_ve", student={"kind": "dual", "pretrained": str(out / "final")}), "test")
    fine_tuned = train(cfg, tmp_path / "fine-tune", show_progress=False)
    assert fine_tuned["steps"] == 3 and 0 <= fine_tuned["eval"]["eval"]["accuracy"] <= 100


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so nothing catches it)."""


def test_pretraining_checkpoints_logs_and_resumes_to_the_same_weights(tmp_path, monkeypatch) -> None:
    """The engine of `vldistill train`: a run killed after its step-4 checkpoint resumes bit for bit."""
    from vldistill.training import checkpoint as ckpt
    from vldistill.training.run_folder import read_rows

    tree = _tree(train={"epochs": 2, "checkpoint_every": 2, "log_every": 1})
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(tree))
    reference = pretrain_dual(load_pretrain_config(config), tmp_path / "reference", show_progress=False)
    real_save = ckpt.save_checkpoint

    def save(root, step, *args, **kwargs):
        result = real_save(root, step, *args, **kwargs)
        if step == 4:  # mid epoch 2 (3 steps per epoch)
            raise _Killed
        return result

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    run = tmp_path / "run"
    with pytest.raises(_Killed):
        pretrain_dual(load_pretrain_config(config), run, show_progress=False)
    monkeypatch.undo()
    assert not (run / "final").exists()
    refused = CliRunner().invoke(app, ["pretrain", str(config), "--out", str(run), "--no-progress"])
    assert isinstance(refused.exception, ConfigError) and "already holds a run" in str(refused.exception)
    resumed = CliRunner().invoke(app, ["pretrain", str(config), "--out", str(run), "--no-progress", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from step-00000004 (epoch 1, step 4)" in resumed.output
    a = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
    b = load_file(str(run / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = read_rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r.get("kind") == "step"] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in rows if r.get("kind") != "step"] == [1, 2]
    assert all(r["lr"] > 0 and r["grad_norm"] > 0 and r["loss"] > 0 for r in rows if r.get("kind") == "step")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["first_epoch"] == reference["first_epoch"] | {"seconds": summary["first_epoch"]["seconds"]}
    assert (run / "config.yaml").is_file() and list((run / "tensorboard").rglob("events.out.tfevents.*"))


# ------------------------------------------------------------------------------ config, teachers


def test_config_errors_name_the_key(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_tree(student={"kind": "fusion"})))
    with pytest.raises(ConfigError, match="set student.kind: dual"):
        load_pretrain_config(path)
    path.write_text(yaml.safe_dump(_tree(train={"epoch": 2})))
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_pretrain_config(path)
    demo = load_pretrain_config(PRESETS_DIR / "dide-pretrain-demo.yaml", ["train.epochs=1"])
    assert (demo.name, demo.train.epochs, demo.teacher.kind) == ("dide-pretrain-demo", 1, "fusion")
    assert isinstance(demo, DidePretrainConfig)


def _vilt(cls, directory: Path) -> ViltForImageAndTextRetrieval:
    config = ViltConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=40,
    )
    model = cls(config)
    model.save_pretrained(directory)
    minilm_tokenizer().save_pretrained(directory)
    ViltImageProcessorPil(size={"shortest_edge": 32}).save_pretrained(directory)  # as hub ViLT checkpoints ship
    return model


def test_a_hub_style_retrieval_checkpoint_loads_and_another_head_is_refused(tmp_path) -> None:
    # Hub ViLT retrieval checkpoints keep the default num_labels=2 that their one-logit head ignores.
    saved = _vilt(ViltForImageAndTextRetrieval, tmp_path / "itm")
    assert saved.config.num_labels == 2
    teacher = load_itm_teacher(TeacherConfig(kind="fusion", pretrained=str(tmp_path / "itm"), image_size=32))
    assert teacher.task == "vcr"
    assert torch.equal(teacher.student.model.rank_output.weight, saved.rank_output.weight)
    assert teacher.processor.image_size == (32, 32)
    _vilt(ViltForQuestionAnswering, tmp_path / "vqa")
    with pytest.raises(ConfigError, match="not ViltForImageAndTextRetrieval"):
        load_itm_teacher(TeacherConfig(kind="fusion", pretrained=str(tmp_path / "vqa")))


def test_an_itm_teacher_that_cannot_be_found_is_one_line_naming_its_key(tmp_path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants as hub_constants

    requests: list[str] = []
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kw: requests.append(url))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as offline:
        load_itm_teacher(TeacherConfig(kind="fusion", pretrained="nobody-vldistill/no-such-vilt"))
    assert str(offline.value) == (
        "teacher.pretrained 'nobody-vldistill/no-such-vilt' is not a local folder, and this hub id is not in the "
        "Hugging Face cache while offline mode (HF_HUB_OFFLINE) is on; fix: --set teacher.pretrained=/local/dir "
        "(a folder holding the checkpoint), or download it where the hub is reachable"
    )
    with pytest.raises(ConfigError) as missing:
        load_itm_teacher(TeacherConfig(kind="fusion", pretrained=str(tmp_path / "nowhere")))
    assert str(missing.value) == (
        f"teacher.pretrained '{tmp_path / 'nowhere'}' is not a folder (nor a hub id); "
        "fix: --set teacher.pretrained=/local/dir (a folder holding the checkpoint)"
    )
    assert requests == []


def test_an_itm_teacher_whose_matching_head_is_missing_is_refused(tmp_path) -> None:
    saved = _vilt(ViltForImageAndTextRetrieval, tmp_path / "itm")
    weights = tmp_path / "itm" / "model.safetensors"
    kept = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("rank_output.")}
    assert len(kept) < len(saved.state_dict())
    save_file(kept, str(weights), metadata={"format": "pt"})
    with pytest.raises(ConfigError) as err:
        load_itm_teacher(TeacherConfig(kind="fusion", pretrained=str(tmp_path / "itm")))
    assert str(err.value).startswith(
        f"teacher.pretrained '{tmp_path / 'itm'}' lacks 2 weights (rank_output.bias, rank_output.weight), which "
        "would start random; fix:"
    )
