"""Teacher-cache size of every real-size preset, projected to the full training split.

For each preset of ``configs/`` whose method has teachers, the teachers the preset names are built at
their real size with random weights from their architecture's config (no hub access: sizes depend
on shapes, not weights), the cache is built as ``vldistill`` stores it (``open_teacher_cache``) over a
few examples of the generated world, and the bytes per stored image, text and example are measured
on disk. Three storage options: float32, float16 (the presets' ``cache.fp16: true``) and int8 with a
scale per token (``cache.int8``); the float16 / int8 caches are the float32 one re-encoded with the
builder's own ``encode`` (what the builder would write from the same targets). Per option: bytes,
the projected size, the relative error of the method's loss terms against float32 (a small random
student of the preset's kind, one batch), and the median time of a cache lookup and of a training
step (lookup + forward + loss + backward of that student) on the batch; and of the lookup without the
derived fields (what deriving CLIP's joint-space tokens costs).

    python bench/cache_size.py --json cache-size.json             # every preset, 8 examples each
    python bench/cache_size.py --presets clip_td-vqa,mad-vqa --examples 4

Real-size stand-ins (the presets' checkpoints, as their published configs give them): CLIP ViT-B/16
= ``CLIPConfig`` defaults with ``patch_size=16`` (text 512 wide, vision 768, 12 layers each, joint
space 512); CLIP-V = its vision tower (``CLIPVisionConfig``); RoBERTa-base = ``RobertaConfig``
defaults; ViLT-B/32 = ``ViltConfig`` defaults (768 wide, 12 layers, 384 px, patch 32, 40 text
tokens), with 3,129 VQA answers as ``dandelin/vilt-b32-finetuned-vqa``. Every text model uses the
packaged BERT-uncased WordPiece tokenizer (the only one offline): the cache pools text to 32 word
slots, so its sizes do not depend on the tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPVisionConfig, RobertaConfig, ViltConfig
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from vldistill.config import parse_config
from vldistill.data.loader import ExampleDataset, collate_fn
from vldistill.data.split_sizes import PUBLISHED_TRAIN_SPLITS
from vldistill.distill.methods import build_method
from vldistill.models.processing import DEFAULT_MEAN, DEFAULT_STD, Processor
from vldistill.models.students import build_student, student_processor
from vldistill.models.teachers import CLIPTeacher, FusionTeacher, TextTeacher, VisionTeacher, build_teacher
from vldistill.models.teachers.text import TEXT_TEACHER_IMAGE_SIZE, minilm_tokenizer
from vldistill.training.cache import TeacherCache, open_teacher_cache
from vldistill.training.cache.shards import Shard, encode, write_shard
from vldistill.training.cache.size import projected_bytes, store_sizes
from vldistill.training.cache.teacher_cache import STORES
from vldistill.training.experiment import load_data

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
SPLITS = PUBLISHED_TRAIN_SPLITS  # images, texts, examples of each task's training split, with sources
STORAGES = ("float32", "float16", "int8")
TINY_STUDENT = {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "intermediate_size": 128}
# DiDE compares attention maps head by head on the teacher's grid: ViLT-B/32's 12 heads, 384 px, patch 32.
DUAL_STUDENT = {**TINY_STUDENT, "hidden_size": 96, "num_heads": 12, "image_size": 384, "patch_size": 32}
VQA_ANSWERS = 3129  # dandelin/vilt-b32-finetuned-vqa's answer vocabulary


def real_teacher(spec: Any, task: str, answers: list[str] | None) -> torch.nn.Module:
    """The teacher ``spec`` names, at its real size with random weights (see the module docstring);
    the two packaged real models (``efficientnet-lite0``, ``minilm``) with their real weights."""
    tok = minilm_tokenizer()
    name, kind, length = spec.pretrained or "", spec.kind, spec.max_length
    if name in ("efficientnet-lite0", "minilm"):
        return build_teacher(spec, task=task)
    if kind == "clip" and "clip-vit-base-patch16" in name:
        text = dict(vocab_size=len(tok), eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, pad_token_id=0)
        config = CLIPConfig(text_config=text, vision_config=dict(patch_size=16, image_size=224), projection_dim=512)
        size = spec.image_size or 224
        return CLIPTeacher.from_config(config, Processor(tok, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, length))
    if kind == "vision" and "clip-vit-base-patch16" in name:
        size = spec.image_size or 224
        processor = Processor(tok, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, length)
        return VisionTeacher.from_config(CLIPVisionConfig(patch_size=16, image_size=224), processor)
    if kind == "text" and "roberta-base" in name:
        size = spec.image_size or TEXT_TEACHER_IMAGE_SIZE
        config = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
        return TextTeacher.from_config(config, Processor(tok, size, DEFAULT_MEAN, DEFAULT_STD, length))
    if kind == "fusion":  # ViLT-B/32 fine-tuned on the task
        processor = Processor(tok, spec.image_size or 384, DEFAULT_MEAN, DEFAULT_STD, length)
        labels = {"vqa": VQA_ANSWERS, "snli_ve": 3, "vcr": 1, "nlvr2": 2}[task]
        names = None
        if task == "vqa":  # the student's answers first, so that the teacher's logits map onto them
            names = list(answers or [])[:labels] + [f"answer {i}" for i in range(labels - len(answers or []))]
        config = ViltConfig(vocab_size=len(tok))
        return FusionTeacher.from_config(config, task, labels, processor, answers=names)
    raise SystemExit(f"no real-size stand-in for a {kind} teacher {name!r}: add one to bench/cache_size.py")


# Not a preset: MAD with the two real teachers that ship as packages (real weights, so real activation
# statistics for the loss error of float16 / int8), at the real-size presets' 224 px.
REAL_WEIGHTS = "mad-real-weights"
REAL_WEIGHTS_TREE = {
    "name": REAL_WEIGHTS,
    "data": {"task": "snli_ve"},
    "student": {"kind": "fusion"},
    "method": {
        "name": "mad",
        "teachers": {
            "vision": {"kind": "vision", "pretrained": "efficientnet-lite0", "image_size": 224},
            "text": {"kind": "text", "pretrained": "minilm"},
        },
        "feature_loss": "cosine",
        "selection": "student_cls",
        "ratio": 0.5,
        "weighting": "student_confidence",
    },
    "train": {},
    "cache": {"enabled": True, "fp16": True},
}


def presets() -> list[str]:
    """Every ``configs/`` experiment whose method has teachers (protocols and demos are not experiments)."""
    out = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        tree = yaml.safe_load(path.read_text())
        if isinstance(tree, dict) and tree.get("method", {}).get("teachers") and "data" in tree:
            out.append(path.stem)
    return out


def transcode(source: Path, target: Path, storage: str) -> None:
    """Copy a float32 cache into ``target`` with every shard re-encoded in ``storage``."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name.startswith("shard-"):
            tensors = {k: v for name, t in load_file(str(path)).items() for k, v in encode(name, t, storage).items()}
            write_shard(target / path.name, Shard(path).keys, tensors)
        elif path.is_file() and not path.name.startswith("."):
            shutil.copyfile(path, target / path.name)


def _stored_only(cache: TeacherCache, examples: Any) -> Any:
    """A lookup that skips the derived fields (CLIP's joint-space tokens): what deriving them costs."""
    derived, cache.derived = cache.derived, {}
    try:
        return cache.lookup(examples)
    finally:
        cache.derived = derived


def _median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def measure(name: str, n: int, work: Path, teachers_memo: dict[tuple, Any], repeats: int) -> dict[str, Any]:
    """Build ``name``'s cache on ``n`` world examples; sizes, projection, loss error and times per storage."""
    if name == REAL_WEIGHTS:
        tree = json.loads(json.dumps(REAL_WEIGHTS_TREE))
    else:
        tree = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    task = tree["data"]["task"]
    kind = tree.get("student", {}).get("kind", "fusion")
    student = {"kind": kind, **(DUAL_STUDENT if kind == "dual" else TINY_STUDENT)}
    preset_storage = "float16" if tree.get("cache", {}).get("fp16") else "float32"
    tree.update(
        data={"task": task, "root": "world", "world_scale": 0.1, "max_train": n, "max_eval": 4},
        student=student,
        cache={"enabled": True, "dir": str(work / name / "float32"), "fp16": False},
    )
    tree["train"].update(eval_batch_size=n, mixed_precision="no")
    cfg = parse_config(tree, name)
    data = load_data(cfg.data, verbose=False)
    answers = data.builder.answers or None
    torch.manual_seed(0)
    teachers = {}
    for tname, spec in cfg.method.teachers.items():
        memo_key = (spec.kind, spec.pretrained, spec.image_size, task if spec.kind == "fusion" else None)
        if memo_key not in teachers_memo:
            teachers_memo[memo_key] = real_teacher(spec, task, answers)
        teachers[tname] = teachers_memo[memo_key]
    method = build_method(cfg.method, teachers, task, answers)
    start = time.perf_counter()
    caches = {"float32": open_teacher_cache(cfg, data, method)}
    build_s = time.perf_counter() - start
    for storage in STORAGES[1:]:
        transcode(caches["float32"].folder, work / name / storage, storage)
        caches[storage] = TeacherCache(work / name / storage)

    model = build_student(cfg.student, task, data.builder.num_labels, answers).eval()  # no dropout: same losses
    loader = torch.utils.data.DataLoader(
        ExampleDataset(data.train), batch_size=n, collate_fn=collate_fn(student_processor(cfg.student), task, answers)
    )
    batch = next(iter(loader))
    cross = method.needs_cross_attention
    exact = caches["float32"].lookup(batch.examples)
    method.setup(model(batch.student, output_cross_attention=cross), exact)

    def losses(targets: Any) -> dict[str, torch.Tensor]:
        return method.losses(model(batch.student, output_cross_attention=cross), batch, targets)

    with torch.no_grad():
        reference = {k: float(v) for k, v in losses(exact).items()}
    split = SPLITS[task]
    options = {}
    for storage, cache in caches.items():
        sizes = store_sizes(cache)
        per = {s: round(sizes[s]["bytes_per_row"], 1) for s in STORES}
        total = projected_bytes(cache, split)  # per row x distinct images / texts / examples, + memo, maps
        with torch.no_grad():
            got = {k: float(v) for k, v in losses(cache.lookup(batch.examples)).items()}
        errors = {k: abs(got[k] - v) / abs(v) if v else abs(got[k]) for k, v in reference.items()}

        def step(cache: TeacherCache = cache) -> None:
            model.zero_grad(set_to_none=True)
            sum(losses(cache.lookup(batch.examples)).values()).backward()

        options[storage] = {
            "bytes_per_image": per["images"],
            "bytes_per_text": per["texts"],
            "bytes_per_example": per["examples"],
            "projected_gb": round(total / GB, 1),
            "rows": {s: sizes[s]["rows"] for s in STORES},
            "loss_terms": reference if storage == "float32" else got,
            "max_relative_loss_error": max(errors.values()) if errors else 0.0,
            "lookup_ms": _median_ms(lambda cache=cache: cache.lookup(batch.examples), repeats),
            "lookup_ms_without_derived": _median_ms(lambda cache=cache: _stored_only(cache, batch.examples), repeats),
            "step_ms": _median_ms(step, repeats),
        }
    default = preset_storage
    shutil.rmtree(work / name, ignore_errors=True)
    return {
        **{k: options[default][k] for k in ("bytes_per_image", "bytes_per_text", "bytes_per_example", "projected_gb")},
        "storage": default,
        "task": task,
        "teachers": {t: f"{s.kind} {s.pretrained}" for t, s in cfg.method.teachers.items()},
        "split": dataclasses.asdict(split),
        "examples_measured": len(data.train),
        "batch": n,
        "build_seconds": round(build_s, 1),
        "options": options,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--presets", help="comma-separated preset names (default: every preset with teachers)")
    parser.add_argument("--examples", type=int, default=8, help="world examples per preset (also the batch)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of a lookup and of a step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.presets.split(",") if args.presets else [*presets(), REAL_WEIGHTS]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.perf_counter()
    results, memo = {}, {}
    with tempfile.TemporaryDirectory(prefix="vldistill-cache-size-") as tmp:
        for name in names:
            config = ROOT / "configs" / f"{name}.yaml"
            text = config.read_text() if config.is_file() else json.dumps(REAL_WEIGHTS_TREE)
            if not any(k[1] in text for k in memo):
                memo.clear()  # the next preset needs other teachers: free these
            results[name] = measure(name, args.examples, Path(tmp), memo, args.repeats)
            r = results[name]
            print(
                f"{name:16s} {r['storage']}: image {r['bytes_per_image'] / 1e3:8.1f} kB  text "
                f"{r['bytes_per_text'] / 1e3:7.1f} kB  example {r['bytes_per_example'] / 1e3:7.1f} kB  -> "
                + "  ".join(f"{s} {o['projected_gb']:6.1f} GB" for s, o in r["options"].items()),
                flush=True,
            )
    out = {
        "command": " ".join(["python bench/cache_size.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": started,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "threads": args.threads,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
        },
        "gb": "1e9 bytes",
        "presets": results,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
