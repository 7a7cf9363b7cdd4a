"""FSDP in the training loop: whole weights where the loop needs them, and launches it cannot honour refused.

``accelerate launch --config_file configs/accelerate/fsdp.yaml`` makes ``accelerator.prepare`` shard the
student and the method's projections with FSDP2 (``torch.distributed.fsdp.fully_shard``): every process
keeps a shard of each parameter, gradient and Adam moment (DTensors) and gathers a layer's weights only
for its forward and backward. The teachers are never sharded: a method keeps them in a plain dict,
outside the prepared module (:class:`vldistill.distill.base.Method`), so each process holds them whole.

The loop evaluates, selects and saves on the main process alone, and a checkpoint is one file of whole
tensors, whatever the number of processes. Under FSDP both need the whole weights, and gathering them
is a collective that every process must enter at the same point:

- :class:`MainStudent` gives the main process an unsharded replica of the student, refreshed from the
  shards before each evaluation (:meth:`accelerate.Accelerator.get_state_dict`: full state dict,
  offloaded to the CPU of the main process);
- :func:`full_state_dict` / :func:`load_full_state_dict` and :func:`optimizer_state_dict` /
  :func:`load_optimizer_state_dict` write and read the checkpoints' whole weights and optimizer state
  with ``torch.distributed.checkpoint.state_dict`` (``full_state_dict=True``), so a checkpoint of an
  FSDP run is the same file as one of a DDP run, and a resume is bit-exact.

Without FSDP each is the plain call (``module.state_dict()``, ``optimizer.state_dict()``, ...).

Launches refused (:func:`check_launch`): FSDP asked for on CPU (accelerate 1.16 shards only on GPUs and
other accelerators: ``AcceleratorState`` turns ``ACCELERATE_USE_FSDP`` into ``DistributedType.FSDP``
only for ``MULTI_GPU``, ``MULTI_NPU``, ... and a CPU launch is ``MULTI_CPU``, which it would silently
train with DDP), FSDP1 (``fsdp_version: 1``; only FSDP2 is tested), and FSDP for a command whose loop
does not gather (DiDE's ``pretrain``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import accelerate
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule

from vldistill.errors import ConfigError

CONFIG = "configs/accelerate/fsdp.yaml"


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether ``accelerator.prepare`` shards the model with FSDP."""
    return accelerator.distributed_type == DistributedType.FSDP


def check_launch(accelerator: Accelerator, *, supported: bool, command: str) -> None:
    """Refuse an FSDP launch that this run cannot honour, before any data or model is loaded.

    Args:
        supported: whether ``command``'s loop gathers the whole weights under FSDP (``train`` does).
        command: the command's name, for the message.

    Raises:
        ConfigError: FSDP was asked for (``ACCELERATE_USE_FSDP``, set by ``accelerate launch`` from a config
            with ``distributed_type: FSDP``) but accelerate did not turn it on (no GPU: accelerate's
            ``AcceleratorState`` enables FSDP only for ``MULTI_GPU`` and the other accelerator types, not
            ``MULTI_CPU``); or it is FSDP1; or ``command`` does not support FSDP.
    """
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and not is_sharded(accelerator):
        raise ConfigError(
            f"accelerate config: distributed_type FSDP, but accelerate {accelerate.__version__} shards with FSDP "
            f"only on GPUs (and other accelerators); this {accelerator.distributed_type.value} launch would "
            "silently train unsharded with DDP; fix: on CPU launch with torchrun --nproc_per_node N -m vldistill "
            f"{command} ... (DDP, the same updates), or run the FSDP config on GPUs"
        )
    if not is_sharded(accelerator):
        return
    if not supported:
        raise ConfigError(
            f"accelerate config: distributed_type FSDP is not supported by vldistill {command} (its loop saves on "
            f"the main process alone); fix: launch it with DDP (accelerate launch --multi_gpu, or torchrun)"
        )
    if not accelerator.is_fsdp2:
        raise ConfigError(
            f"accelerate config: fsdp_version {accelerator.state.fsdp_plugin.fsdp_version}: vldistill supports "
            f"FSDP2 only; fix: set fsdp_config.fsdp_version: 2 (see {CONFIG})"
        )


def full_state_dict(accelerator: Accelerator, module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s whole state dict on the main process (``{}`` on the others). Every process must call it.

    A module sharded by FSDP is gathered (:meth:`accelerate.Accelerator.get_state_dict`, which calls
    ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with ``full_state_dict=True,
    cpu_offload=True``: whole tensors on the CPU of rank 0); any other is its ``state_dict()``.
    """
    if isinstance(module, FSDPModule):
        return accelerator.get_state_dict(module)
    return module.state_dict() if accelerator.is_main_process else {}


def load_full_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load whole tensors (every process passes the same ``state``) into ``module``, sharding them under FSDP.

    Raises:
        RuntimeError: a key is missing or unexpected (strict, as ``load_state_dict``).
    """
    if isinstance(module, FSDPModule):
        set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True))
    else:
        module.load_state_dict(state)


def optimizer_state_dict(accelerator: Accelerator, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer's whole state on the main process (``{}`` on the others). Every process must call it.

    Under FSDP each process holds its shard of the Adam moments: ``get_optimizer_state_dict`` with
    ``full_state_dict=True`` gathers them, keyed by parameter name (not by index, as
    ``optimizer.state_dict()`` is); ``cpu_offload`` keeps them on rank 0 only.
    """
    if isinstance(model, FSDPModule):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return optimizer.state_dict() if accelerator.is_main_process else {}


def load_optimizer_state_dict(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Load what :func:`optimizer_state_dict` saved (every process passes the same ``state``)."""
    if isinstance(model, FSDPModule):
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


class MainStudent:
    """The student that the main process evaluates, selects and saves.

    Without FSDP that is the student being trained. Under FSDP its parameters are shards, and a forward
    on one process alone would wait for the others' shards: the main process keeps an unsharded replica
    (a copy made before ``prepare``, without gradients; the price is one more copy of the student on
    that process), refreshed from the shards by every process together.

    Args:
        accelerator: the run's accelerator (FSDP or not).
        student: the student, before ``accelerator.prepare``.
        prefix: the student's name in the prepared model's state dict (``"student."`` in ``DistillModel``).
    """

    def __init__(self, accelerator: Accelerator, student: nn.Module, prefix: str) -> None:
        self.accelerator, self.student, self.prefix = accelerator, student, prefix
        sharded = is_sharded(accelerator)
        self.replica = copy.deepcopy(student).requires_grad_(False) if sharded and accelerator.is_main_process else None

    def __call__(self, model: nn.Module) -> nn.Module | None:
        """The student with the current weights of ``model`` (the prepared model); every process must call it.

        Returns the trained student itself without FSDP; under FSDP the refreshed replica on the main
        process and ``None`` on the others (they hold shards only).
        """
        if not is_sharded(self.accelerator):
            return self.student
        weights = full_state_dict(self.accelerator, model)
        if self.replica is None:
            return None
        n = len(self.prefix)
        self.replica.load_state_dict({k[n:]: v for k, v in weights.items() if k.startswith(self.prefix)})
        return self.replica
