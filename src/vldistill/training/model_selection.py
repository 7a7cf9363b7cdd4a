"""Model selection on the dev set: which weights a run keeps, as part of its checkpointed state.

A run evaluates its student on the dev set every ``train.eval_every`` optimizer steps and at its last
step; with ``eval_every`` the best of these evaluations on the task's primary metric is the run's
result (the first best on a tie), and ``train.early_stopping`` ends the run after that many
evaluations in a row without improvement. Without ``eval_every`` the result is the last weights, and
the one dev evaluation (at the last step) only reports them.

:class:`ModelSelection` is a module: the best score, its step, the counts and a copy of the best weights
are buffers, so they are saved and restored with the run's checkpoints (``checkpoints/step-N/``,
written atomically), and a run killed between two evaluations resumes to the same result, bit for bit.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelSelection(nn.Module):
    """The best dev evaluation so far and, when selecting (``eval_every``), a copy of its weights.

    Args:
        student: the student being trained (copied once when ``eval_every`` is set: the copy's memory is
            the price of keeping the best weights).
        eval_every: evaluate every this many optimizer steps, and keep the best; ``None``: keep the last.
        patience: stop after this many evaluations in a row without improvement (``None``: never).
        has_dev: whether the run has a dev set; without one nothing is ever due.
    """

    best_score: torch.Tensor
    best_step: torch.Tensor
    evaluations: torch.Tensor
    since_best: torch.Tensor

    def __init__(self, student: nn.Module, *, eval_every: int | None, patience: int | None, has_dev: bool) -> None:
        super().__init__()
        self.eval_every, self.patience, self.has_dev = eval_every, patience, has_dev
        self.best = copy.deepcopy(student).requires_grad_(False) if eval_every and has_dev else None
        self.register_buffer("best_score", torch.tensor(-math.inf, dtype=torch.float64))
        self.register_buffer("best_step", torch.tensor(-1))
        self.register_buffer("evaluations", torch.tensor(0))
        self.register_buffer("since_best", torch.tensor(0))

    def due(self, step: int, last_step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is followed by a dev evaluation.

        >>> selection = ModelSelection(nn.Linear(1, 1), eval_every=4, patience=None, has_dev=True)
        >>> [s for s in range(1, 11) if selection.due(s, last_step=10)]
        [4, 8, 10]
        """
        every = self.eval_every is not None and step % self.eval_every == 0
        return self.has_dev and (every or step == last_step)

    def update(self, step: int, score: float, student: nn.Module | None) -> bool:
        """Record the dev ``score`` of ``student`` after ``step``; returns whether its weights are now the selected.

        With ``eval_every``: an improvement is a score strictly above the best so far (its weights are
        copied); without: every evaluation is the selected one (the last weights). ``student`` is ``None``
        on the processes of an FSDP run other than the main one (they hold shards only; the copy that
        counts, saved in checkpoints and restored at the end, is the main process's).
        """
        self.evaluations += 1
        improved = self.best is None or score > float(self.best_score)
        if improved:
            self.best_score.fill_(score)
            self.best_step.fill_(step)
            self.since_best.zero_()
            if self.best is not None and student is not None:
                self.best.load_state_dict(student.state_dict())
        else:
            self.since_best += 1
        return improved

    @property
    def stopped(self) -> bool:
        """Whether early stopping ended the run (``patience`` evaluations in a row without improvement)."""
        return self.patience is not None and int(self.since_best) >= self.patience

    def restore_best(self, student: nn.Module) -> None:
        """Load the selected weights into ``student`` (a no-op without ``eval_every``: the last weights are kept)."""
        if self.best is not None and int(self.evaluations) > 0:
            student.load_state_dict(self.best.state_dict())
