"""The demo's own small CLIP: contrastive pre-training on the generated world's captions.

No real CLIP weights are reachable offline, so the demo trains its CLIP-TD teacher itself, on the
premise of CLIP-TD and MAD: image-caption pairs are plentiful and cheap, labelled VL data is scarce.
:func:`pretrain_clip` trains a small ``CLIPModel`` (MiniLM WordPiece text tower, ViT image tower)
with CLIP's symmetric InfoNCE loss on the caption pairs of every style of a generated world, and
reports how useful it is: in-batch image->text retrieval on held-out pairs, and zero-shot VQA
(scoring ``"<question> <answer>"`` candidates against the image, exactly as CLIP-TD's confidence
weight does). :func:`ensure_demo_clip` caches the result by settings and world.

The trained directory loads as a teacher like any CLIP checkpoint::

    build_teacher(TeacherConfig(kind="clip", pretrained=str(ensure_demo_clip(world, cache))))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from transformers import CLIPModel

from vldistill.demo.grounding import grounding_accuracy, zero_shot_vqa
from vldistill.distill.contrastive import clip_loss, clip_loss_with_negatives, filip_loss, swap_word_negatives
from vldistill.errors import ConfigError, DataError
from vldistill.models.pooling import end_token_pool
from vldistill.models.processing import DEFAULT_MEAN, DEFAULT_STD, Processor
from vldistill.models.teachers.clip import CLIPTeacher, small_clip_config
from vldistill.models.teachers.text import minilm_tokenizer
from vldistill.training.progress import TrainProgress

CAPTION_STYLES: tuple[str, ...] = ("base", "shifted")
HELD_OUT_FRACTION = 0.1
RETRIEVAL_BATCH = 64
SETTINGS_FILE = "demo_clip.json"
TRAINING_VERSION = "2"
"""Bump whenever the training procedure changes, so cached teachers are retrained."""
_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its learned temperature at 100


def caption_files(world_dir: Path, styles: Sequence[str] = CAPTION_STYLES) -> list[Path]:
    """``<world>/<style>/captions/captions.jsonl`` of each of ``styles`` the world has, in that order."""
    files = [Path(world_dir) / s / "captions" / "captions.jsonl" for s in styles]
    files = [f for f in files if f.is_file()]
    if not files:
        raise ConfigError(
            f"{world_dir} has no <style>/captions/captions.jsonl; fix: generate the world first "
            "(vldistill data generate) or pass the folder that holds base/ and shifted/"
        )
    return files


def read_captions(path: Path) -> list[tuple[Path, str]]:
    """``(absolute image path, caption)`` per line of a captions.jsonl (image paths are relative to it)."""
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"line {n}", f"not JSON ({err.msg})", "write one JSON object per line") from err
        if not (isinstance(row, dict) and isinstance(row.get("image"), str) and isinstance(row.get("caption"), str)):
            raise DataError(
                path,
                f"line {n}",
                "needs string fields 'image' and 'caption'",
                'write {"image": "images/<n>.jpg", "caption": "..."}',
            )
        pairs.append((path.parent / row["image"], row["caption"]))
    return pairs


def _decode(path: Path, source: Path) -> Image.Image:
    try:
        with Image.open(path) as raw:
            return raw.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(source, str(path), f"cannot read image ({err})", "regenerate the world") from err


def load_caption_pairs(
    world_dir: Path,
    processor: Processor,
    *,
    max_pairs: int | None = None,
    seed: int = 0,
    styles: Sequence[str] = CAPTION_STYLES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """The caption pairs of ``styles``, decoded once: ``pixels`` ``(N, 3, H, W)``, ``input_ids`` and
    ``attention_mask`` ``(N, L)`` (L the longest caption), and the ``N`` captions. With ``max_pairs``, a
    seeded random subset."""
    pairs = [(image, text, f) for f in caption_files(world_dir, styles) for image, text in read_captions(f)]
    if max_pairs is not None and max_pairs < len(pairs):
        keep = np.sort(np.random.default_rng(seed).permutation(len(pairs))[:max_pairs])
        pairs = [pairs[int(i)] for i in keep]
    if len(pairs) < 4:
        raise ConfigError(f"{world_dir}: {len(pairs)} caption pairs; fix: generate a larger world (need >= 4)")
    pixels = torch.cat(
        [
            processor.images_to_tensor([_decode(p, f) for p, _, f in pairs[i : i + 512]])
            for i in range(0, len(pairs), 512)
        ]
    )
    texts = [t for _, t, _ in pairs]
    input_ids, attention_mask, _ = processor.tokenize(texts)
    return pixels, input_ids, attention_mask, texts


def _encode(
    model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, *, tokens: bool = False
) -> tuple[torch.Tensor, ...]:
    """Unit-norm image and text embeddings ``(B, E)``; texts cut to the batch's longest (less compute).

    With ``tokens``, also the unit-norm patch embeddings ``(B, P, E)`` (post-layernorm patch tokens
    through the visual projection, as :class:`CLIPTeacher` gives them), the token embeddings
    ``(B, L, E)`` and the mask ``(B, L)`` of the real words (no [CLS], [SEP] or padding).
    """
    length = int(mask.sum(dim=1).max())
    ids, mask = ids[:, :length], mask[:, :length]
    vision = model.vision_model(pixel_values=pixels)
    text = model.text_model(input_ids=ids, attention_mask=mask)
    image_embeds = F.normalize(model.visual_projection(vision.pooler_output), dim=-1)
    text_embeds = F.normalize(model.text_projection(end_token_pool(text.last_hidden_state, mask)), dim=-1)
    if not tokens:
        return image_embeds, text_embeds
    patches = model.visual_projection(model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:]))
    words = model.text_projection(text.last_hidden_state)
    real = mask.bool() & (ids != model.config.text_config.eos_token_id)
    real[:, 0] = False
    return image_embeds, text_embeds, F.normalize(patches, dim=-1), F.normalize(words, dim=-1), real


def _embed(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Unit-norm image and text embeddings ``(B, E)`` (see :func:`_encode`)."""
    return _encode(model, pixels, ids, mask)


@torch.no_grad()
def retrieval_accuracy(
    model: CLIPModel,
    pixels: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int = RETRIEVAL_BATCH,
) -> tuple[float, float]:
    """Top-1 image->text retrieval among the other captions of each batch, and its chance level.

    Pairs are cut into consecutive batches of ``batch_size``; returns (accuracy, mean 1 / batch size).
    """
    hits, chance = 0, 0.0
    for i in range(0, len(pixels), batch_size):
        image, text = _embed(model, pixels[i : i + batch_size], ids[i : i + batch_size], mask[i : i + batch_size])
        sims = image @ text.T
        hits += int((sims.argmax(dim=1) == torch.arange(len(sims))).sum())
        chance += 1.0  # each of the len(sims) pairs has chance 1 / len(sims)
    return hits / len(pixels), chance / len(pixels)


@torch.no_grad()
def adamw_schedule(
    model: torch.nn.Module, lr: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on matrices only (not biases and norms) and :func:`_schedule`'s warm-up and
    cosine decay over ``total_steps``: the pre-training recipe of the demo's CLIP and student."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total_steps))


def _schedule(total_steps: int) -> Callable[[int], float]:
    """Linear warm-up over the first 10% of steps, then cosine decay to zero (a multiplier of lr)."""
    warmup = max(1, total_steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


def _contrastive_step(
    model: CLIPModel,
    pixels: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    token_loss_weight: float,
    negative_ids: torch.Tensor | None,
    negative_mask: torch.Tensor | None,
) -> torch.Tensor:
    """One batch's loss: CLIP's InfoNCE (+ FILIP's, weighted), each with the hard negatives if given."""
    image, text, patches, words, real = _encode(model, pixels, ids, mask, tokens=True)
    scale = model.logit_scale
    if negative_ids is None:
        loss = clip_loss(image, text, scale)
        if token_loss_weight:
            loss = loss + token_loss_weight * filip_loss(patches, words, real, scale)
        return loss
    assert negative_mask is not None
    length = int(negative_mask.sum(dim=1).max())
    negative = model.text_model(input_ids=negative_ids[:, :length], attention_mask=negative_mask[:, :length])
    negative_embeds = F.normalize(
        model.text_projection(end_token_pool(negative.last_hidden_state, negative_mask[:, :length])), dim=-1
    )
    loss = clip_loss_with_negatives(image, text, negative_embeds, scale)
    if token_loss_weight:
        negative_words_ = F.normalize(model.text_projection(negative.last_hidden_state), dim=-1)
        negative_real = negative_mask[:, :length].bool() & (
            negative_ids[:, :length] != model.config.text_config.eos_token_id
        )
        negative_real[:, 0] = False
        loss = loss + token_loss_weight * filip_loss(patches, words, real, scale, negative_words_, negative_real)
    return loss


def pretrain_clip(
    world_dir: Path,
    out_dir: Path,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    projection_dim: int = 64,
    max_length: int = 40,
    epochs: int = 6,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    max_pairs: int | None = None,
    token_loss_weight: float = 1.0,
    negative_words: Sequence[Sequence[str]] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Train a small CLIP on the world's caption pairs and save it to ``out_dir`` as a CLIP teacher.

    The loss is CLIP's InfoNCE on pooled embeddings plus ``token_loss_weight`` times FILIP's on
    word-patch late interaction (``vldistill.distill.contrastive``), which gives the teacher the
    word-to-region relevance CLIP-TD's token selection reads. With ``negative_words`` (groups of
    interchangeable words, e.g. the world's colours and shapes), every caption also gets a hard
    negative with one such word swapped, scored against its own image in both losses.

    Pairs of every style are pooled; 10% (seeded) are held out for the retrieval check. AdamW with
    linear warm-up and cosine decay; the result depends only on the arguments (and the thread count:
    CPU kernels may sum in another order with other thread counts). The caller sets torch's threads.

    Returns:
        ``{"pairs", "train_pairs", "held_out_pairs", "seconds" (training only), "first_epoch_loss",
        "final_loss" (mean over the last epoch), "retrieval_top1", "retrieval_chance",
        "logit_scale", "zero_shot_vqa": {style: zero_shot_vqa(...)}}`` (styles with a VQA folder).
    """
    out_dir = Path(out_dir)
    tokenizer = minilm_tokenizer()
    processor = Processor(tokenizer, image_size, DEFAULT_MEAN, DEFAULT_STD, max_length=max_length)
    pixels, ids, mask, texts = load_caption_pairs(world_dir, processor, max_pairs=max_pairs, seed=seed)
    negative_ids = negative_mask = None
    if negative_words:
        swapped = swap_word_negatives(texts, negative_words, np.random.default_rng(seed + 1))
        negatives = [n if n is not None else t for n, t in zip(swapped, texts, strict=True)]
        negative_ids, negative_mask, _ = processor.tokenize(negatives)
    n_held = max(1, round(len(pixels) * HELD_OUT_FRACTION))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(pixels)))
    held, train = order[:n_held], order[n_held:]
    batch_size = min(batch_size, len(train))
    steps_per_epoch = len(train) // batch_size  # drop the ragged last batch: InfoNCE wants full batches
    config = small_clip_config(
        tokenizer,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=4 * hidden_size,
        projection_dim=projection_dim,
        max_length=max_length,
    )
    # A private RNG stream: the seed fixes init and shuffling without touching the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = CLIPTeacher.from_config(config, processor)
        model = teacher.model.requires_grad_(True).train()
        optimizer, scheduler = adamw_schedule(model, lr, weight_decay, epochs * steps_per_epoch)
        shuffle = torch.Generator().manual_seed(seed)
        epoch_losses: list[float] = []
        start = time.perf_counter()
        with TrainProgress(enabled=progress, total=epochs * steps_per_epoch) as bar:
            for epoch in range(epochs):
                perm = train[torch.randperm(len(train), generator=shuffle)]
                total = 0.0
                for step in range(steps_per_epoch):
                    rows = perm[step * batch_size : (step + 1) * batch_size]
                    loss = _contrastive_step(
                        model,
                        pixels[rows],
                        ids[rows],
                        mask[rows],
                        token_loss_weight,
                        None if negative_ids is None else negative_ids[rows],
                        None if negative_mask is None else negative_mask[rows],
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    with torch.no_grad():
                        model.logit_scale.clamp_(0.0, _MAX_LOGIT_SCALE)
                    total += loss.item()
                    bar.advance(loss.item(), epoch)
                epoch_losses.append(total / steps_per_epoch)
        seconds = time.perf_counter() - start
    teacher.freeze()
    top1, chance = retrieval_accuracy(model, pixels[held], ids[held], mask[held])
    teacher.save_pretrained(out_dir)
    stats: dict[str, Any] = {
        "pairs": len(pixels),
        "train_pairs": len(train),
        "held_out_pairs": n_held,
        "seconds": round(seconds, 2),
        "first_epoch_loss": epoch_losses[0],
        "final_loss": epoch_losses[-1],
        "retrieval_top1": top1,
        "retrieval_chance": chance,
        "logit_scale": teacher.logit_scale,
        "zero_shot_vqa": {
            style: zero_shot_vqa(teacher, Path(world_dir) / style / "vqa")
            for style in CAPTION_STYLES
            if (Path(world_dir) / style / "vqa").is_dir()
        },
        "grounding": {
            style: grounding_accuracy(teacher, Path(world_dir) / style / "vqa", limit=200)
            for style in CAPTION_STYLES
            if (Path(world_dir) / style / "vqa").is_dir()
        },
    }
    return stats


def world_digest(world_dir: Path) -> str:
    """sha256 over every style's MANIFEST.json (generator version, seed, scale) and captions.jsonl."""
    digest = hashlib.sha256()
    for captions in caption_files(world_dir):
        style_dir = captions.parent.parent
        manifest = style_dir / "MANIFEST.json"
        digest.update(style_dir.name.encode())
        digest.update(manifest.read_bytes() if manifest.is_file() else b"")
        digest.update(captions.read_bytes())
    return digest.hexdigest()


def ensure_demo_clip(world_dir: Path, cache_root: Path, **kwargs: Any) -> Path:
    """The directory of a CLIP pre-trained by :func:`pretrain_clip` on ``world_dir`` with ``kwargs``,
    training it only when no cached one has the same settings and world.

    The directory is ``cache_root/clip-<key>`` with its settings, world digest and training stats in
    ``demo_clip.json``. Training writes to a private temporary folder renamed into place at the end,
    so an interrupted run never leaves a directory that looks complete.
    """
    return ensure_trained("clip", pretrain_clip, TRAINING_VERSION, world_dir, cache_root, **kwargs)


def ensure_trained(
    prefix: str, train: Callable[..., dict[str, Any]], version: str, world_dir: Path, cache_root: Path, **kwargs: Any
) -> Path:
    """``cache_root/<prefix>-<key>``: what ``train(world_dir, out_dir, **kwargs)`` writes, trained only when
    no cached folder has the same ``version``, settings and world (``key`` hashes them; the settings and
    the returned stats go to ``demo_clip.json``). Training writes to a private temporary folder renamed
    into place at the end, so an interrupted run never leaves a folder that looks complete."""
    progress = kwargs.pop("progress", True)
    settings = {"training_version": version, "world": world_digest(world_dir), **kwargs}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    target = Path(cache_root) / f"{prefix}-{key}"
    sidecar = target / SETTINGS_FILE
    if sidecar.is_file() and json.loads(sidecar.read_text(encoding="utf-8")).get("settings") == settings:
        return target
    partial = Path(cache_root) / f".{prefix}-{key}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    stats = train(world_dir, partial, progress=progress, **kwargs)
    (partial / SETTINGS_FILE).write_text(json.dumps({"settings": settings, "stats": stats}, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)  # a stale or half-copied folder: its sidecar did not match above
    partial.rename(target)
    return target
