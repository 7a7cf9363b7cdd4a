"""Task heads on pooled vectors, task losses and training targets, shared by the students.

Head layouts follow transformers' ViLT heads so both students read alike: a 2-layer MLP
(``Linear -> LayerNorm -> GELU -> Linear``) for vqa / snli_ve / nlvr2 (nlvr2 on both views' pooled
vectors concatenated), one linear logit per candidate for vcr.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vldistill.data.examples import TASK_KINDS, TaskExample
from vldistill.errors import ConfigError


def _mlp(width_in: int, width_hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width_in, width_hidden),
        nn.LayerNorm(width_hidden),
        nn.GELU(),
        nn.Linear(width_hidden, width_out),
    )


def build_head(task: str, hidden_size: int, num_labels: int) -> nn.Module:
    """The head of ``task`` on ``hidden_size`` pooled vectors (see ``head_logits`` for inputs)."""
    kind = TASK_KINDS.get(task)
    if kind is None:
        raise ConfigError(f"unknown task {task!r}; fix: use one of {sorted(TASK_KINDS)}")
    if kind == "multiple_choice":
        return nn.Linear(hidden_size, 1)
    if kind == "pair":
        return _mlp(2 * hidden_size, 2 * hidden_size, num_labels)
    return _mlp(hidden_size, 2 * hidden_size, num_labels)


def head_logits(task: str, head: nn.Module, pooled: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(B, C)`` logits from ``(B * V, D)`` pooled view vectors (views of an example adjacent).

    vcr scores each view by one logit (C = V = 4); nlvr2 concatenates its views (``(B, V * D)``);
    single-view tasks apply the head directly.
    """
    if TASK_KINDS[task] == "multiple_choice":
        return head(pooled).view(batch_size, -1)
    return head(pooled.reshape(batch_size, -1))


def task_loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean training loss of a batch.

    vqa: binary cross-entropy with logits against soft scores ``(B, A)`` float, scaled by the
    number of answers as ViLT (and BAN) do; other tasks: cross-entropy against ``(B,)`` long labels.
    Examples with label -1 (unknown) are ignored.
    """
    if TASK_KINDS.get(task) == "multilabel":
        return nn.functional.binary_cross_entropy_with_logits(logits, targets.float()) * targets.shape[1]
    return nn.functional.cross_entropy(logits, targets.long(), ignore_index=-1)


def task_targets(examples: Sequence[TaskExample], answers: Sequence[str] | None = None) -> torch.Tensor:
    """Training targets of a batch: vqa soft scores ``(B, A)`` over ``answers``, else labels ``(B,)``.

    Answers outside the vocabulary are dropped (their score cannot be predicted).
    """
    if not examples:
        raise ValueError("empty batch")
    if TASK_KINDS.get(examples[0].task) != "multilabel":
        return torch.tensor([ex.label for ex in examples], dtype=torch.long)
    if not answers:
        raise ConfigError("vqa targets need the answer vocabulary; fix: pass answers")
    column = {a: i for i, a in enumerate(answers)}
    scores = torch.zeros(len(examples), len(answers))
    for row, ex in enumerate(examples):
        for answer, score in (ex.soft_label or {}).items():
            if answer in column:
                scores[row, column[answer]] = score
    return scores
