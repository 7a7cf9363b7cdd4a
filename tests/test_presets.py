"""The shipped presets: every experiment YAML validates, the protocol preset validates, and each
real-size preset passes ``vldistill plan`` once its checkpoints are swapped for tiny stand-ins.

The stand-ins are tiny models of the very families the presets name (ViLT, CLIP, RoBERTa, ViT, BERT),
saved with ``save_pretrained`` to temporary folders with their tokenizers and image settings, so
``plan`` goes through the same ``from_pretrained`` code as the hub ids. Only ``pretrained`` ids, image
sizes and the data section change; kinds, methods, selection and weighting stay as shipped.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import (
    BertConfig,
    BertModel,
    CLIPModel,
    CLIPTokenizerFast,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizerFast,
    ViltConfig,
    ViltForMaskedLM,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from vldistill.config import PRESETS_DIR, DataConfig, load_config, parse_config
from vldistill.models.fusion import FusionStudent
from vldistill.models.processing import DEFAULT_MEAN, DEFAULT_STD, Processor
from vldistill.models.students import save_student
from vldistill.models.teachers.clip import small_clip_config
from vldistill.models.teachers.text import minilm_tokenizer
from vldistill.protocol.runner import experiment, load_protocol
from vldistill.training.experiment import load_data
from vldistill.training.plan import Plan, make_plan

REAL_PRESETS = {
    "clip_td-vqa": "vqa",
    "clip_td-snli_ve": "snli_ve",
    "clip_td-vcr": "vcr",
    "mad-vqa": "vqa",
    "mad-snli_ve": "snli_ve",
    "mad-vcr": "vcr",
    "dide-vqa": "vqa",
    "dide-snli_ve": "snli_ve",
    "dide-nlvr2": "nlvr2",
    "vilt-snli_ve": "snli_ve",
}
SPLITS = {
    "vqa": ("train2014", "val2014"),
    "snli_ve": ("train", "test"),
    "vcr": ("train", "val"),
    "nlvr2": ("train", "dev"),
}
DEV_SPLITS = {"vqa": None, "snli_ve": "dev", "vcr": None, "nlvr2": None}  # model selection only
DIDE_TEACHERS = {
    "vqa": "dandelin/vilt-b32-finetuned-vqa",
    "nlvr2": "dandelin/vilt-b32-finetuned-nlvr2",
    "snli_ve": "runs/vilt-snli_ve/final",
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Real sizes -> stand-in sizes: ViLT-B/32 and ViT-B/32 see 384 px (12 x 12 patches of 32), CLIP
# ViT-B/16 224 px (14 x 14 patches of 16). The stand-ins keep the relation "the teacher's grid differs
# from the student's": ViLT/ViT 32 px / patch 8 = 4 x 4, CLIP 48 px / patch 8 = 6 x 6.
IMAGE_SIZES = {384: 32, 224: 48}
STUDENT_HIDDEN, CLIP_HIDDEN, ROBERTA_HIDDEN, HEADS = 32, 48, 24, 2
TINY_LAYERS = {"num_hidden_layers": 1, "num_attention_heads": HEADS}


def _experiment_files() -> list[Path]:
    """Every experiment config in configs/ (protocol files, with ``base`` and ``tasks``, and DiDE
    pre-training files, with a top-level ``teacher``, are not)."""
    files = []
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        protocol = isinstance(tree, dict) and "base" in tree and "tasks" in tree
        if not protocol and not (isinstance(tree, dict) and "teacher" in tree):
            files.append(path)
    return files


def test_every_pretraining_preset_validates() -> None:
    from vldistill.distill.pretrain import load_pretrain_config

    files = [p for p in sorted(PRESETS_DIR.glob("*.yaml")) if "teacher" in (yaml.safe_load(p.read_text()) or {})]
    assert files, "configs/ ships a DiDE pre-training preset"
    for path in files:
        assert load_pretrain_config(path, []).student.kind == "dual"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- validation of the shipped files


def test_the_experiment_list_holds_every_real_preset() -> None:
    names = {p.stem for p in _experiment_files()}
    assert set(REAL_PRESETS) | {"smoke"} <= names


@pytest.mark.parametrize("path", _experiment_files(), ids=lambda p: p.stem)
def test_every_experiment_preset_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem  # the name a run reports is the preset's own


@pytest.mark.parametrize("name", sorted(REAL_PRESETS))
def test_real_presets_use_the_papers_settings(name: str) -> None:
    cfg = load_config(PRESETS_DIR / f"{name}.yaml")
    task = REAL_PRESETS[name]
    assert cfg.data.task == task and cfg.data.splits() == SPLITS[task] and cfg.data.dev_split == DEV_SPLITS[task]
    assert cfg.data.root == f"/data/{task}"  # the placeholder docs/presets.md tells users to replace
    t = cfg.train
    assert (t.lr, t.warmup_ratio, t.mixed_precision) == (1e-4, 0.1, "bf16")
    assert t.batch_size * t.grad_accum == 256
    assert t.epochs == (10 if task in ("vqa", "nlvr2") else 5)
    method = name.split("-")[0]
    assert cfg.method.name == ("none" if method == "vilt" else method)
    assert (cfg.cache.enabled, cfg.cache.fp16) == (method != "vilt", method != "vilt")
    teachers = {k: (v.kind, v.pretrained, v.image_size) for k, v in cfg.method.teachers.items()}
    if method in ("clip_td", "mad", "vilt"):
        assert (cfg.student.kind, cfg.student.pretrained) == ("fusion", "dandelin/vilt-b32-mlm")
    if method == "clip_td":
        assert teachers == {"clip": ("clip", "openai/clip-vit-base-patch16", 224)}
    elif method == "mad":
        assert teachers == {
            "vision": ("vision", "openai/clip-vit-base-patch16", 224),
            "text": ("text", "FacebookAI/roberta-base", None),
        }
    elif method == "dide":
        s = cfg.student
        assert (s.kind, s.image_pretrained, s.text_pretrained, s.image_size) == (
            "dual",
            "google/vit-base-patch32-384",
            "google-bert/bert-base-uncased",
            384,
        )
        assert teachers == {"vilt": ("fusion", DIDE_TEACHERS[task], 384)}
    else:
        assert teachers == {}


def test_the_protocol_preset_validates() -> None:
    spec = load_protocol(PRESETS_DIR / "protocol-paper.yaml")
    assert spec.tasks == ["vqa", "snli_ve", "vcr"]
    assert [(c.name, c.fraction) for c in spec.conditions] == [
        ("full", None),
        ("lowshot-1", 0.01),
        ("lowshot-5", 0.05),
        ("lowshot-10", 0.1),
        ("lowshot-25", 0.25),
    ]
    assert list(spec.methods) == ["none", "kd", "clip_td", "mad"]
    assert {label: e.method["name"] for label, e in spec.methods.items()} == {
        "none": "none",
        "kd": "kd",
        "clip_td": "clip_td",
        "mad": "mad",
    }
    assert spec.seeds == [0, 1, 2]
    assert spec.base["student"]["pretrained"] == "dandelin/vilt-b32-mlm"
    # every cell of the matrix is a valid experiment config
    out = Path("unused")  # no method refers to an earlier run, so nothing is read from it
    for task in spec.tasks:
        for cond in spec.conditions:
            for label in spec.methods:
                cfg = experiment(spec, task, cond, label, 1, out)
                assert (cfg.data.task, cfg.data.fraction, cfg.data.subset_seed, cfg.train.seed) == (
                    task,
                    cond.fraction,
                    1,
                    1,
                )


# ---------------------------------------------------------------- tiny stand-ins of the checkpoints


def _bpe_files(folder: Path, vocab: dict[str, int], merges: list[str]) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(folder / "vocab.json"), str(folder / "merges.txt")


def _clip_tokenizer(folder: Path) -> CLIPTokenizerFast:
    """CLIP's byte-level BPE format over printable ASCII, with a few merges."""
    chars = [chr(i) for i in range(33, 127)]
    merges = ["r e", "re d</w>", "c u", "cu b", "cub e</w>", "b l", "bl u", "blu e</w>"]
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab = {tok: i for i, tok in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}
    # transformers 5 ignores the vocab_file= keyword: paths go positionally.
    return CLIPTokenizerFast(*_bpe_files(folder / "bpe", vocab, merges))


def _roberta_tokenizer(folder: Path) -> RobertaTokenizerFast:
    """RoBERTa's (GPT-2's) byte-level BPE: printable ASCII, 'Ġ' marks a leading space."""
    chars = [chr(i) for i in range(33, 127)]
    merges = [f"Ġ {c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # RoBERTa's ids 0..3
    tokens = specials + chars + ["Ġ"] + [m.replace(" ", "") for m in merges] + ["<mask>"]
    return RobertaTokenizerFast(*_bpe_files(folder / "bpe", {t: i for i, t in enumerate(tokens)}, merges))


def _vilt_config(**extra: Any) -> ViltConfig:
    return ViltConfig(
        vocab_size=minilm_tokenizer().vocab_size,
        hidden_size=STUDENT_HIDDEN,
        intermediate_size=64,
        max_position_embeddings=40,
        image_size=32,
        patch_size=8,
        **TINY_LAYERS,
        **extra,
    )


def _vilt_processor() -> Processor:
    # ViLT ships ViLT's BERT-uncased WordPiece (MiniLM's is the same vocabulary) and 0.5 mean/std.
    return Processor(minilm_tokenizer(), 32, DEFAULT_MEAN, DEFAULT_STD)


def _save(model: Any, processor: Processor | None, folder: Path) -> str:
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Hub id (or placeholder path) -> {"path": stand-in folder, "parameters": its parameter count}."""
    root = tmp_path_factory.mktemp("standins")
    torch.manual_seed(0)
    made: dict[str, dict[str, Any]] = {}

    def add(name: str, model: Any, processor: Processor | None, parameters: int | None = None) -> None:
        folder = root / name.replace("/", "--")
        made[name] = {"path": _save(model, processor, folder), "parameters": parameters or _count(model)}

    add("dandelin/vilt-b32-mlm", ViltForMaskedLM(_vilt_config()), _vilt_processor())

    clip_tok = _clip_tokenizer(root / "clip-tok")
    clip_config = small_clip_config(
        clip_tok,
        image_size=48,
        patch_size=8,
        hidden_size=CLIP_HIDDEN,
        num_layers=1,
        num_heads=HEADS,
        intermediate_size=64,
        projection_dim=16,
    )
    clip = CLIPModel._from_config(clip_config)
    add("openai/clip-vit-base-patch16", clip, Processor(clip_tok, 48, CLIP_MEAN, CLIP_STD), parameters=_count(clip))
    made["openai/clip-vit-base-patch16"]["vision_parameters"] = _count(clip.vision_model)

    rob_tok = _roberta_tokenizer(root / "roberta-tok")
    roberta_config = RobertaConfig(
        vocab_size=len(rob_tok),
        hidden_size=ROBERTA_HIDDEN,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **TINY_LAYERS,
    )
    roberta = RobertaModel(roberta_config, add_pooling_layer=False)
    add("FacebookAI/roberta-base", roberta, Processor(rob_tok, 16, DEFAULT_MEAN, DEFAULT_STD))

    vit = ViTForImageClassification(
        ViTConfig(
            image_size=32, patch_size=8, hidden_size=STUDENT_HIDDEN, intermediate_size=64, num_labels=10, **TINY_LAYERS
        )
    )
    add("google/vit-base-patch32-384", vit, None)
    # As on the hub: a ViT checkpoint carries its image settings (0.5 mean/std), read for the dual student.
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(made["google/vit-base-patch32-384"]["path"])
    bert = BertModel(
        BertConfig(
            vocab_size=minilm_tokenizer().vocab_size,
            hidden_size=STUDENT_HIDDEN,
            intermediate_size=64,
            max_position_embeddings=64,
            **TINY_LAYERS,
        )
    )
    folder = root / "bert-base-uncased"
    bert.save_pretrained(folder)
    minilm_tokenizer().save_pretrained(folder)
    made["google-bert/bert-base-uncased"] = {"path": str(folder), "parameters": _count(bert)}

    # A vqa student's answer vocabulary comes from the training data; DiDE's soft labels need the
    # teacher's head to list the same answers in the same order, so the stand-in is given the world's.
    answers = load_data(DataConfig(task="vqa", root="world", world_scale=0.1)).builder.answers
    vqa = FusionStudent.from_config(_vilt_config(), "vqa", len(answers), answers)
    add(DIDE_TEACHERS["vqa"], vqa, _vilt_processor())
    add(DIDE_TEACHERS["nlvr2"], FusionStudent.from_config(_vilt_config(), "nlvr2", 2), _vilt_processor())
    # The SNLI-VE teacher is the user's own fine-tuned ViLT: a folder written as `vldistill train` writes one.
    ve = FusionStudent.from_config(_vilt_config(), "snli_ve", 3)
    folder = root / "vilt-snli_ve-final"
    save_student(ve, folder, _vilt_processor())
    made[DIDE_TEACHERS["snli_ve"]] = {"path": str(folder), "parameters": _count(ve)}
    return made


def _standin_tree(name: str, standins: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The preset's tree with stand-in checkpoints, stand-in image sizes and a tiny world data section."""
    tree = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    shipped = copy.deepcopy(tree)

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in ("pretrained", "image_pretrained", "text_pretrained"):
                    out[key] = standins[value]["path"]  # a KeyError: a checkpoint with no stand-in
                elif key == "image_size":
                    out[key] = IMAGE_SIZES[value]
                else:
                    out[key] = swap(value)
            return out
        return node

    tree = swap(tree)
    tree["data"] = {**tree["data"], "root": "world", "world_scale": 0.1, "max_train": 8, "max_eval": 4}
    # Only checkpoints, image sizes and data changed: method switches and kinds are the shipped ones.
    for key in ("name", "selection", "weighting", "ratio", "feature_loss", "feature_weight", "logit_weight"):
        assert tree["method"].get(key) == shipped["method"].get(key)
    assert tree["student"]["kind"] == shipped["student"]["kind"]
    return tree


def _plan(name: str, standins: dict[str, dict[str, Any]]) -> Plan:
    cfg = parse_config(_standin_tree(name, standins), f"{name} (stand-ins)")
    return make_plan(cfg, batch_size=4)


def _links(plan: Plan) -> dict[str, dict[str, Any]]:
    return {link["term"]: link for link in plan.links}


def _finite(losses: dict[str, float]) -> bool:
    return all(v == v and abs(v) < 1e6 for v in losses.values())


@pytest.mark.parametrize("name", ["clip_td-vqa", "clip_td-snli_ve", "clip_td-vcr"])
def test_clip_td_presets_plan_with_stand_ins(name: str, standins: dict[str, dict[str, Any]]) -> None:
    plan = _plan(name, standins)
    task = REAL_PRESETS[name]
    links = _links(plan)
    assert set(links) == {"feature/clip/image", "feature/clip/text"}
    image, text = links["feature/clip/image"], links["feature/clip/text"]
    # CLIP's 6 x 6 patch grid pooled onto ViLT's 4 x 4, each side projected to CLIP's width
    assert image["teacher"].endswith("(6x6)") and "x36x48" in image["teacher"]
    assert image["student"].endswith("compared on 4x4")
    assert image["projection"] == text["projection"] == f"Linear({STUDENT_HIDDEN}->{CLIP_HIDDEN})"
    assert image["selected_max"] == 8  # ratio 0.5 of 16 image tokens
    assert 1 <= text["selected_min"] <= text["selected_max"] <= 32
    assert (plan.method["selection"], plan.method["weighting"]) == ("teacher_relevance", "teacher_confidence")
    assert plan.weights is not None and 0 < plan.weights["min"] <= 1.0 <= plan.weights["max"]
    assert plan.weights["mean"] == pytest.approx(1.0, abs=1e-3)  # method.weight_normalize (default)
    assert set(plan.losses) == {"task", "feature/clip/image", "feature/clip/text"} and _finite(plan.losses)
    assert plan.student["image_grid"] == "4x4" and plan.student["task"] == task
    assert plan.teachers[0]["image_size"] == "48x48"
    assert plan.parameters["projections"] == 2 * (STUDENT_HIDDEN * CLIP_HIDDEN + CLIP_HIDDEN)
    assert plan.parameters["teachers (frozen)"] == standins["openai/clip-vit-base-patch16"]["parameters"]


@pytest.mark.parametrize("name", ["mad-vqa", "mad-snli_ve", "mad-vcr"])
def test_mad_presets_plan_with_stand_ins(name: str, standins: dict[str, dict[str, Any]]) -> None:
    plan = _plan(name, standins)
    links = _links(plan)
    assert set(links) == {"feature/vision/image", "feature/text/text"}
    assert links["feature/vision/image"]["projection"] == f"Linear({STUDENT_HIDDEN}->{CLIP_HIDDEN})"
    assert links["feature/vision/image"]["student"].endswith("compared on 4x4")
    assert links["feature/text/text"]["projection"] == f"Linear({STUDENT_HIDDEN}->{ROBERTA_HIDDEN})"
    assert links["feature/vision/image"]["selected_max"] == 8
    assert plan.method["selection"] == "student_cls" and plan.method["weighting"] == "student_confidence"
    assert plan.weights is not None and 0 < plan.weights["min"] <= 1.0 <= plan.weights["max"]
    assert plan.weights["mean"] == pytest.approx(1.0, abs=1e-3)  # method.weight_normalize (default)
    assert set(plan.losses) == {"task", "feature/vision/image", "feature/text/text"} and _finite(plan.losses)
    assert {t["name"]: t["kind"] for t in plan.teachers} == {"vision": "vision", "text": "text"}
    # the vision teacher is CLIP's image tower alone, loaded from the full CLIP checkpoint
    expected = (
        standins["openai/clip-vit-base-patch16"]["vision_parameters"]
        + standins["FacebookAI/roberta-base"]["parameters"]
    )
    assert plan.parameters["teachers (frozen)"] == expected
    assert plan.parameters["projections"] == (STUDENT_HIDDEN + 1) * (CLIP_HIDDEN + ROBERTA_HIDDEN)


@pytest.mark.parametrize("name", ["dide-vqa", "dide-snli_ve", "dide-nlvr2"])
def test_dide_presets_plan_with_stand_ins(name: str, standins: dict[str, dict[str, Any]]) -> None:
    plan = _plan(name, standins)
    task = REAL_PRESETS[name]
    links = _links(plan)
    assert set(links) == {"attention/t2i + i2t"}
    student = links["attention/t2i + i2t"]["student"]
    views = 8 if task == "nlvr2" else 4  # NLVR2: two images per example, one view each
    t2i, i2t = student.removeprefix("t2i ").split(", i2t ")
    v, h, length, p = (int(x) for x in t2i.split("x"))
    assert (v, h, p) == (views, HEADS, 16) and i2t == f"{views}x{HEADS}x16x{length}"
    assert set(plan.losses) == {"task", "attention/t2i", "attention/i2t", "logits/soft_labels"}
    assert _finite(plan.losses) and plan.losses["attention/t2i"] >= 0 and plan.losses["attention/i2t"] >= 0
    assert plan.student["kind"] == "dual" and plan.student["image_grid"] == "4x4"
    assert plan.parameters["projections"] == 0
    assert plan.parameters["teachers (frozen)"] == standins[DIDE_TEACHERS[task]]["parameters"]
    assert plan.student["logits"] == f"4x{plan.student['labels']}"


def test_vilt_snli_ve_preset_plans_with_a_stand_in(standins: dict[str, dict[str, Any]]) -> None:
    plan = _plan("vilt-snli_ve", standins)
    assert plan.method == {"method": "none"} and plan.teachers == [] and plan.links == []
    assert set(plan.losses) == {"task"} and 0 < plan.losses["task"] < 5  # 3-way cross-entropy
    assert (plan.student["labels"], plan.student["logits"], plan.student["image_grid"]) == (3, "4x3", "4x4")
    # the loaded backbone is the stand-in's (no MLM head) plus a fresh SNLI-VE classifier
    assert plan.parameters["student"] == _count(FusionStudent.from_config(_vilt_config(), "snli_ve", 3))
