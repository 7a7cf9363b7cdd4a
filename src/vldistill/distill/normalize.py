"""Normalisation of teacher tokens before the feature distance (``method.target_norm``).

Why: a teacher's tokens share one dominant direction (mean pairwise cosine of CLIP ViT-B/16 image
tokens 0.74), so a student projection that outputs the *mean* token, which its bias alone can do,
already meets most of a cosine objective and learns little about each token. Normalising the
targets takes that shared part out:

- ``none``: the raw tokens (as the papers, which do not say otherwise).
- ``standardize``: per channel, ``(t - mean) / std``, the mean and std of each channel over the
  training set's teacher tokens (real tokens only), per teacher and modality. The statistics are
  computed once at setup from a bounded, evenly spaced sample of the training examples (up to
  ``STATISTICS_BATCHES`` batches), read from the teacher cache when it is enabled (and stored in
  the cache's folder, so they share its key) or from the live teachers otherwise; the method keeps
  them as buffers, so a checkpoint holds them and a resumed run uses the very same numbers.
- ``layernorm``: per token, a LayerNorm without affine parameters (zero mean, unit variance over
  the channels of each token); no statistics. It removes each token's own offset and scale, but
  not a direction shared across tokens that is not constant over channels.

Measured on a tiny example (``tests/distill/test_normalize.py``): 64 tokens of width 32, a shared
direction of norm 10 plus unit Gaussian noise per channel (seed 0), mean pairwise cosine 0.77 raw
(CLIP's 0.74 regime), 0.78 after ``layernorm`` and -0.003 after ``standardize`` (statistics of 4,096
such tokens). A student that outputs the mean token has a cosine distance of 0.12 to the raw targets
and 1.00 to the standardised ones: it no longer gets the objective for free.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from vldistill.data.examples import TaskExample
from vldistill.errors import DataError

TargetNorm = Literal["none", "standardize", "layernorm"]
# Statistics sample: at most this many training batches' worth of examples.
STATISTICS_BATCHES = 64
# A channel that is constant on the sample (e.g. a dead ReLU channel) is centred, not blown up.
STD_FLOOR = 1e-6
LAYERNORM_EPS = 1e-5

Statistics = dict[str, tuple[torch.Tensor, torch.Tensor, int]]  # "teacher/modality" -> mean, std, count


class Standardize(nn.Module):
    """``(t - mean) / std`` per channel, with the statistics as buffers (saved in checkpoints).

    Args:
        width: ``D``, the teacher's token width.

    ``forward`` takes ``(..., D)`` tokens; it raises ``RuntimeError`` until :meth:`fit` was called
    (or a checkpoint with fitted statistics was loaded), so an unfitted identity is never used.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # A Python flag, not a look at ``count``: reading a GPU buffer would sync every step.
        self.fitted = False
        self.register_load_state_dict_post_hook(Standardize._after_load)

    @staticmethod
    def _after_load(module: nn.Module, incompatible: Any) -> None:
        module.fitted = int(module.count) > 0

    def fit(self, mean: torch.Tensor, std: torch.Tensor, count: int) -> None:
        """Set the statistics: ``mean``, ``std`` ``(D,)`` over ``count`` tokens."""
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"statistics of width {mean.shape[-1]} for tokens of width {self.mean.shape[0]}")
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(std.clamp(min=STD_FLOOR))
            self.count.fill_(count)
        self.fitted = count > 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("target_norm standardize: statistics were never fitted (fit_target_statistics)")
        return (tokens - self.mean.to(tokens.dtype)) / self.std.to(tokens.dtype)


class TokenLayerNorm(nn.Module):
    """Per-token LayerNorm without affine parameters: ``(..., D)`` -> ``(..., D)``."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(tokens, tokens.shape[-1:], eps=LAYERNORM_EPS)


def make_target_norm(kind: TargetNorm, width: int) -> nn.Module:
    """The module that normalises teacher tokens of width ``width`` for ``method.target_norm``."""
    if kind == "standardize":
        return Standardize(width)
    if kind == "layernorm":
        return TokenLayerNorm()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown target_norm '{kind}'; use none, standardize or layernorm")


def token_moments(target_batches: Iterable[Mapping[str, Mapping[str, torch.Tensor]]]) -> Statistics:
    """Per-channel mean and (population) std of the teachers' real tokens over several batches of targets.

    Args:
        target_batches: targets as :func:`~vldistill.distill.targets.teacher_targets` returns them;
            image tokens ``image_tokens`` ``(B, I, P, D)`` all count, text words ``text_words``
            ``(B, T, W, D)`` count where ``text_word_mask`` is true.

    Returns:
        ``"<teacher>/image"`` and ``"<teacher>/text"`` -> ``(mean (D,), std (D,), number of tokens)``,
        accumulated in float64.

    Example:
        one batch with image tokens ``[[1, 10], [3, 10]]`` -> mean ``[2, 10]``, std ``[1, 0]``, count 2.
    """
    sums: dict[str, list[Any]] = {}

    def add(key: str, tokens: torch.Tensor) -> None:
        x = tokens.detach().to(torch.float64).cpu()
        entry = sums.setdefault(key, [0, torch.zeros(x.shape[-1], dtype=torch.float64), None])
        entry[0] += x.shape[0]
        entry[1] += x.sum(dim=0)
        entry[2] = x.pow(2).sum(dim=0) if entry[2] is None else entry[2] + x.pow(2).sum(dim=0)

    for targets in target_batches:
        for name, t in targets.items():
            if "image_tokens" in t:
                add(f"{name}/image", t["image_tokens"].reshape(-1, t["image_tokens"].shape[-1]))
            if "text_words" in t:
                add(f"{name}/text", t["text_words"][t["text_word_mask"].bool()])
    stats: Statistics = {}
    for key, (count, total, squares) in sums.items():
        if count == 0:
            continue
        mean = total / count
        var = (squares / count - mean.pow(2)).clamp(min=0)
        stats[key] = (mean.float(), var.sqrt().float(), count)
    return stats


def statistics_sample(examples: Sequence[TaskExample], size: int) -> list[TaskExample]:
    """At most ``size`` examples spread evenly over ``examples`` (all of them when there are fewer).

    Evenly spaced, not the first ones: dataset files are often ordered (by image, by answer), and a
    prefix would describe one corner of the data. The sample does not depend on the training seed,
    so every seed and every rank uses the same statistics.
    """
    n = len(examples)
    if n <= size:
        return list(examples)
    return [examples[i * n // size] for i in range(size)]


def mean_pairwise_cosine(tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean cosine similarity of every pair of distinct real tokens of the same instance.

    Args:
        tokens: ``(N, K, D)``; mask: ``(N, K)`` bool, real tokens.

    Returns:
        the mean over all such pairs of all instances (``nan`` if there is none). 1 means all
        tokens point the same way; about 0 means no shared direction.

    Example:
        tokens ``[[1, 0], [1, 1], [0, 1]]`` of one instance: pairs 0.7071, 0, 0.7071 -> 0.4714.
    """
    unit = F.normalize(tokens.detach().float(), dim=-1)
    gram = unit @ unit.transpose(1, 2)
    pairs = mask[:, :, None] & mask[:, None, :]
    pairs &= ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    count = int(pairs.sum())
    return float(gram[pairs].sum() / count) if count else float("nan")


def _save_statistics(path: Path, stats: Statistics) -> None:
    tensors = {
        f"{key}/{part}": value
        for key, (mean, std, _) in stats.items()
        for part, value in (("mean", mean), ("std", std))
    }
    counts = {key: count for key, (_, _, count) in stats.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"counts": json.dumps(counts)})
    os.replace(tmp, path)


def _load_statistics(path: Path) -> Statistics:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            counts = json.loads((f.metadata() or {})["counts"])
        tensors = load_file(str(path))
        return {key: (tensors[f"{key}/mean"], tensors[f"{key}/std"], int(n)) for key, n in counts.items()}
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise DataError(path, None, f"unreadable target statistics ({err})", "delete the file to recompute it") from err


def cached_token_statistics(cache: Any, examples: Sequence[TaskExample], *, chunk: int = 256) -> Statistics:
    """:func:`token_moments` of ``examples``' targets in the teacher ``cache``, stored in its folder.

    The file ``target-stats-<digest>.safetensors`` sits next to the shards, so it shares the cache's
    key (teachers, preprocessing, target settings, data files); the digest covers the examples, so
    another sample gets its own file. A second run reads it instead of recomputing.
    """
    digest = hashlib.sha256(json.dumps([ex.uid for ex in examples]).encode()).hexdigest()[:16]
    path = Path(cache.folder) / f"target-stats-{digest}.safetensors"
    if path.is_file():
        return _load_statistics(path)
    batches = (cache.lookup(examples[i : i + chunk]) for i in range(0, len(examples), chunk))
    stats = token_moments(batches)
    _save_statistics(path, stats)
    return stats


def live_token_statistics(
    targets_for: Callable[[Sequence[TaskExample], list[list[Image.Image]]], dict[str, dict[str, torch.Tensor]]],
    examples: Sequence[TaskExample],
    load_image: Callable[[Path], Image.Image],
    *,
    batch_size: int,
) -> Statistics:
    """:func:`token_moments` of ``examples``' targets computed by live teachers (``Method.targets_for``)."""

    def batches() -> Iterable[dict[str, dict[str, torch.Tensor]]]:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            yield targets_for(chunk, [[load_image(p) for p in ex.images] for ex in chunk])

    return token_moments(batches())
