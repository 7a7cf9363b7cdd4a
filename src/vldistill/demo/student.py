"""The demo's pre-trained student: a small ViLT pre-trained with image-text matching on the world's captions.

The papers distil into students that are pre-trained VL models (ViLT, VisualBERT, ...) and already use
the image; a randomly initialised 2-layer ViLT takes hundreds of steps before its answers depend on the
picture at all, which a 2-core demo cannot afford for every run. :func:`pretrain_fusion_itm` gives the
demo's student a short pre-training with ViLT's image-text matching (ITM) objective (ViLT, arXiv
2102.03334, section 3.3: a binary head on the pooled output, the text paired with its own image or with
another one) on the *base* style's captions only, so that the domain shift stays one the student has
not seen (the demo's CLIP teacher sees both styles). Our choices, the paper being about real captions:

- half of the negatives are *hard*: the caption with one colour or shape word swapped
  (:func:`vldistill.distill.contrastive.swap_word_negatives`), so matching needs the word's region, not
  only the gist; the other half pair the image with the caption of another picture of the batch;
- no masked-word objective: in our measurements on this world (the prototype in
  ``../shared/notes/demo-feasibility.md`` and ours) it added nothing at this size;
- the backbone is saved as a plain ``ViltModel`` with the student's processor, so that
  ``student.pretrained: <folder>`` fine-tunes it for any task with a new head, as with
  ``dandelin/vilt-b32-mlm``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vldistill.demo.teachers import adamw_schedule, ensure_trained, load_caption_pairs
from vldistill.distill.contrastive import swap_word_negatives
from vldistill.models.fusion import FusionStudent
from vldistill.models.outputs import ModelInputs
from vldistill.models.students import StudentConfig, _tiny_vilt, student_processor
from vldistill.training.progress import TrainProgress

TRAINING_VERSION = "1"
"""Bump whenever the pre-training procedure changes, so cached students are retrained."""
HELD_OUT_FRACTION = 0.1


def _views(
    rows: torch.Tensor,
    pixels: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    hard_ids: torch.Tensor,
    hard_mask: torch.Tensor,
    has_hard: torch.Tensor,
    use_hard: torch.Tensor,
) -> tuple[ModelInputs, torch.Tensor]:
    """``2B`` (image, text) views of a batch of ``B`` pairs and their ITM labels (1 = the image's caption).

    Views ``0..B-1`` pair each image with its caption; views ``B..2B-1`` pair it with its hard negative
    where ``use_hard`` (and it has one), else with the caption of the next image of the batch.
    """
    b = len(rows)
    other = rows.roll(-1)
    hard = use_hard & has_hard[rows]
    neg_ids = torch.where(hard[:, None], hard_ids[rows], ids[other])
    neg_mask = torch.where(hard[:, None], hard_mask[rows], mask[other])
    length = int(torch.cat([mask[rows], neg_mask]).sum(dim=1).max())
    input_ids = torch.cat([ids[rows], neg_ids])[:, :length]
    attention = torch.cat([mask[rows], neg_mask])[:, :length]
    inputs = ModelInputs(
        pixel_values=torch.cat([pixels[rows], pixels[rows]]),
        input_ids=input_ids,
        attention_mask=attention,
        word_index=torch.full_like(input_ids, -1),
        n_images=1,
        n_texts=1,
        task="vqa",
    )
    return inputs, torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)])


@torch.no_grad()
def _itm_accuracy(model: FusionStudent, batches: list[tuple[ModelInputs, torch.Tensor]]) -> float:
    model.eval()
    hits = total = 0
    for inputs, labels in batches:
        hits += int((model(inputs).logits.argmax(-1) == labels).sum())
        total += len(labels)
    model.train()
    return hits / max(total, 1)


def pretrain_fusion_itm(
    world_dir: Path,
    out_dir: Path,
    *,
    student: dict[str, Any],
    styles: Sequence[str] = ("base",),
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    hard_fraction: float = 0.5,
    negative_words: Sequence[Sequence[str]] = (),
    max_pairs: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Pre-train the fusion student ``student`` (a ``student:`` config section, tiny sizes) with ITM on the
    caption pairs of ``styles`` and save its backbone and processor to ``out_dir``.

    Each step takes ``batch_size`` pairs and scores ``2 * batch_size`` views (every image with its caption
    and with a negative: its hard negative with probability ``hard_fraction`` when ``negative_words``
    gives it one, else another image's caption), cross-entropy over {mismatch, match} from the
    classifier on ViLT's pooled output. AdamW, linear warm-up and cosine decay; 10% of the pairs
    (seeded) are held out. The result depends only on the arguments and torch's thread count.

    Returns:
        ``{"pairs", "train_pairs", "held_out_pairs", "seconds" (training only), "first_epoch_loss",
        "final_loss", "itm_accuracy_held_out", "itm_accuracy_before"}`` (held-out ITM accuracy on
        the same fixed views, chance 0.5).

    Raises:
        ConfigError: a student section that is not a tiny fusion student, or too few caption pairs.
    """
    cfg = StudentConfig(**{**student, "kind": "fusion"})
    if cfg.pretrained:
        from vldistill.errors import ConfigError

        raise ConfigError("demo_student: the pre-trained student starts from a tiny config; fix: drop 'pretrained'")
    processor = student_processor(cfg)
    pixels, ids, mask, texts = load_caption_pairs(world_dir, processor, max_pairs=max_pairs, seed=seed, styles=styles)
    rng = np.random.default_rng(seed + 1)
    swapped = swap_word_negatives(texts, negative_words, rng) if negative_words else [None] * len(texts)
    has_hard = torch.tensor([s is not None for s in swapped])
    hard_ids, hard_mask, _ = processor.tokenize(
        [s if s is not None else t for s, t in zip(swapped, texts, strict=True)]
    )
    width = max(ids.shape[1], hard_ids.shape[1])
    ids, mask = F.pad(ids, (0, width - ids.shape[1])), F.pad(mask, (0, width - mask.shape[1]))
    hard_ids, hard_mask = (
        F.pad(hard_ids, (0, width - hard_ids.shape[1])),
        F.pad(hard_mask, (0, width - hard_mask.shape[1])),
    )
    n_held = max(2, round(len(pixels) * HELD_OUT_FRACTION))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(pixels)))
    held, train = order[:n_held], order[n_held:]
    batch_size = min(batch_size, len(train))
    steps_per_epoch = max(1, len(train) // batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FusionStudent.from_config(_tiny_vilt(cfg), "vqa", 2, ["no match", "match"]).train()
        gen = torch.Generator().manual_seed(seed)
        held_batches = [
            _views(
                held[i : i + 256],
                pixels,
                ids,
                mask,
                hard_ids,
                hard_mask,
                has_hard,
                torch.rand(len(held[i : i + 256]), generator=gen) < hard_fraction,
            )
            for i in range(0, len(held), 256)
        ]
        before = _itm_accuracy(model, held_batches)
        optimizer, scheduler = adamw_schedule(model, lr, weight_decay, epochs * steps_per_epoch)
        epoch_losses: list[float] = []
        start = time.perf_counter()
        with TrainProgress(enabled=progress, total=epochs * steps_per_epoch) as bar:
            for epoch in range(epochs):
                perm = train[torch.randperm(len(train), generator=gen)]
                total = 0.0
                for step in range(steps_per_epoch):
                    rows = perm[step * batch_size : (step + 1) * batch_size]
                    use_hard = torch.rand(len(rows), generator=gen) < hard_fraction
                    inputs, labels = _views(rows, pixels, ids, mask, hard_ids, hard_mask, has_hard, use_hard)
                    loss = F.cross_entropy(model(inputs).logits, labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total += loss.item()
                    bar.advance(loss.item(), epoch)
                epoch_losses.append(total / steps_per_epoch)
        seconds = time.perf_counter() - start
    after = _itm_accuracy(model, held_batches)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.model.vilt.save_pretrained(str(out_dir))  # the backbone: a new task head is added at fine-tuning
    processor.save_pretrained(out_dir)
    return {
        "pairs": len(pixels),
        "train_pairs": len(train),
        "held_out_pairs": len(held),
        "styles": list(styles),
        "seconds": round(seconds, 2),
        "first_epoch_loss": epoch_losses[0],
        "final_loss": epoch_losses[-1],
        "itm_accuracy_before": before,
        "itm_accuracy_held_out": after,
    }


def ensure_demo_student(world_dir: Path, cache_root: Path, **kwargs: Any) -> Path:
    """``cache_root/student-<key>``: the student :func:`pretrain_fusion_itm` pre-trains on ``world_dir``
    with ``kwargs``, trained only when no cached one has the same settings and world."""
    return ensure_trained("student", pretrain_fusion_itm, TRAINING_VERSION, world_dir, cache_root, **kwargs)
