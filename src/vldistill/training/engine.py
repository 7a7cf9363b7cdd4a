"""The pieces of a training loop that ``train`` (fine-tuning) and ``pretrain_dual`` (DiDE's pre-training) share.

The sampler, the optimizer, the accelerator, gradient accumulation and the optimizer step. The run
folder (config, checkpoints, logs, stop signals) is :mod:`vldistill.training.run_folder`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
from torch import nn

from vldistill.errors import VldistillError
from vldistill.training.sharding import check_launch
from vldistill.training.trackers import TENSORBOARD_DIR, tracker_names


class NumericsError(VldistillError):
    """A NaN or infinite loss: the run stops, the last good checkpoint stays intact."""


class EpochSampler(torch.utils.data.Sampler[int]):
    """A seeded permutation per epoch: the data order is a function of (seed, epoch) alone.

    The method is deliberately not called ``set_epoch``: accelerate calls ``set_epoch`` on samplers
    with its own count of iterations of the loader object, which restarts at 0 for the new loader
    a resumed run builds, and would replay the wrong epoch's order.

    Give its DataLoader a generator of its own (``generator=torch.Generator()``): each iteration of a
    DataLoader draws a seed for its workers, from the global random stream by default, and a run
    resumed mid-epoch iterates one more time than an uninterrupted one, so dropout would differ.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


def build_optimizer(model: nn.Module, tc: Any) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norms.

    The fused kernel updates all parameters in one pass: ~10x faster than the per-tensor loop on CPU
    for small models, where the optimizer step otherwise costs as much as forward and backward.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, fused=True)


def make_accelerator(
    mixed_precision: str,
    out_dir: Path,
    log_with: str | list[str] = "tensorboard",
    *,
    fsdp: bool = False,
    command: str = "train",
) -> Accelerator:
    """The accelerator of a run: its trackers (``log_with``, :mod:`~vldistill.training.trackers`; TensorBoard under
    ``out_dir/tensorboard``), the global batch split across processes.

    Gradient accumulation is ours (:class:`AccumulationPlan`), not accelerate's: accelerate divides
    every micro-batch's loss by the configured number of steps, also in an epoch's last, shorter window.
    ``fsdp``: whether ``command``'s loop supports an FSDP launch (:mod:`vldistill.training.sharding`).

    Raises:
        ConfigError: a tracker of ``log_with`` whose package is not installed (names the ``pip install``);
            an FSDP launch this run cannot honour (:func:`vldistill.training.sharding.check_launch`).
    """
    accelerator = Accelerator(
        # Without a GPU, cpu=True is what makes accelerate run several torchrun processes as DDP over
        # gloo (MULTI_CPU); otherwise each process would silently train alone.
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision if torch.cuda.is_available() else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs()],
        log_with=tracker_names(log_with),
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / TENSORBOARD_DIR)),
    )
    check_launch(accelerator, supported=fsdp, command=command)
    return accelerator


def declare_unused_parameters(accelerator: Accelerator, model: nn.Module, loss: Callable[[], torch.Tensor]) -> None:
    """Tell DDP whether ``model`` has trainable parameters that the loss does not reach (before ``prepare``).

    One backward of ``loss()`` (a sample batch) finds them. DDP must then search the graph for them
    at every step (``find_unused_parameters``); when there are none, asking for that search costs a
    traversal per step and makes every rank print a warning. Single-process runs skip the check.
    """
    if accelerator.num_processes == 1 or accelerator.ddp_handler is None:
        return
    loss().backward()
    unused = [p for p in model.parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    accelerator.ddp_handler.find_unused_parameters = bool(unused)


@dataclass(frozen=True)
class AccumulationPlan:
    """Which micro-batches of an epoch form one optimizer step, and each one's share of its window.

    Batches ``[k * accum, (k + 1) * accum)`` of an epoch of ``ceil(examples / batch_size)`` batches form
    window ``k``; the last window may be shorter, and the last batch smaller. Each micro-batch's mean
    loss is weighted by its share of the window's examples, so a window's gradient is the gradient of
    the mean loss over its examples: the update of one batch of ``batch_size * accum`` examples.

    >>> plan = AccumulationPlan(examples=90, batch_size=8, accum=2)
    >>> plan.batches, plan.steps_per_epoch, plan.at(0), plan.at(10), plan.at(11)
    (12, 6, (0.5, False), (0.8, False), (0.2, True))
    """

    examples: int
    batch_size: int
    accum: int

    @property
    def batches(self) -> int:
        return math.ceil(self.examples / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches / self.accum)

    def _size(self, batch: int) -> int:
        return min(self.batch_size, self.examples - batch * self.batch_size)

    def at(self, batch: int) -> tuple[float, bool]:
        """(weight of micro-batch ``batch`` of the epoch, whether it ends its window: the optimizer steps)."""
        start = batch - batch % self.accum
        end = min(start + self.accum, self.batches)
        if end - start == 1:
            return 1.0, True
        return self._size(batch) / sum(self._size(b) for b in range(start, end)), batch == end - 1


def backward(accelerator: Accelerator, model: nn.Module, loss: torch.Tensor, weight: float, sync: bool) -> None:
    """Backward of ``weight * loss``; gradients are all-reduced across processes only when ``sync``."""
    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
        accelerator.backward(loss if weight == 1.0 else loss * weight)


def optimizer_step(
    accelerator: Accelerator, model: nn.Module, optimizer: Any, scheduler: Any, max_grad_norm: float | None
) -> tuple[float, torch.Tensor | None]:
    """Clip, step, schedule, zero: returns the learning rate this step used and the gradient norm before clipping.

    Without ``max_grad_norm`` the norm is still measured (clipping at infinity multiplies by 1.0).
    """
    lr = float(optimizer.param_groups[0]["lr"])
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return lr, grad_norm


def finite_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the loss terms.

    Raises:
        NumericsError: the sum is NaN or infinite (names the terms), before any backward.
    """
    loss = sum(terms.values())
    assert isinstance(loss, torch.Tensor)
    if not torch.isfinite(loss):
        bad = [k for k, v in terms.items() if not torch.isfinite(v)]
        raise NumericsError(f"loss term(s) {', '.join(bad)} not finite")
    return loss
