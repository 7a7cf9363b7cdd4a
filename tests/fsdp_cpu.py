"""``python -m vldistill`` with accelerate's FSDP2 switched on over CPU processes (gloo): tests/test_fsdp.py's harness.

Launched as ``accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/fsdp_cpu.py
train ...``. accelerate 1.16 does not shard on CPU: ``AcceleratorState`` turns ``ACCELERATE_USE_FSDP`` into
``DistributedType.FSDP`` only for GPU-like launches, and a CPU launch stays ``MULTI_CPU`` (DDP), which
vldistill refuses. torch's FSDP2 itself runs on CPU over gloo, so this harness does the one step accelerate
skips: it builds accelerate's FSDP plugin from the launch's ``FSDP_*`` environment (as ``Accelerator`` does)
and marks the shared ``AcceleratorState`` as FSDP before vldistill checks it. Everything after that
(``prepare``: ``fully_shard``; gathering; the optimizer over DTensors) is accelerate's and torch's own code,
as on GPUs. Test use only: it sets attributes of accelerate's state that are not a public API.

With ``VLDISTILL_FSDP_REPORT`` set, each process writes ``<that path>.<rank>.json`` after the command: whether
the prepared model was sharded (an ``FSDPModule`` with DTensor parameters) and whether any teacher was.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import accelerate
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

import vldistill.training.engine as engine
import vldistill.training.train as train_module
from vldistill.cli import main

seen: dict[str, Any] = {}


def fsdp_accelerator(*args: Any, **kwargs: Any) -> accelerate.Accelerator:
    """accelerate's Accelerator, with FSDP turned on from the launch's environment as on a GPU machine."""
    accelerator = accelerate.Accelerator(*args, **kwargs)
    state = AcceleratorState()
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads FSDP_VERSION, FSDP_AUTO_WRAP_POLICY, ...
    state.distributed_type = DistributedType.FSDP
    # as AcceleratorState.__init__ does: each later AcceleratorState() copies PartialState's shared state
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    prepare = accelerator.prepare

    def recording_prepare(*objects: Any) -> Any:
        prepared = prepare(*objects)
        seen["model"] = prepared[0]
        return prepared

    accelerator.prepare = recording_prepare
    return accelerator


def recording_build_models(*args: Any, **kwargs: Any) -> Any:
    seen["built"] = built = real_build_models(*args, **kwargs)
    return built


def sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule) or any(isinstance(p, DTensor) for p in module.parameters())


def write_report(path: str) -> None:
    model, teachers = seen["model"], seen["built"].method.teachers
    facts = {
        "model_is_fsdp": isinstance(model, FSDPModule),
        "sharded_parameters": sum(isinstance(p, DTensor) for p in model.parameters()),
        "parameters": sum(1 for _ in model.parameters()),
        "teachers": sorted(teachers),
        "sharded_teachers": sorted(name for name, t in teachers.items() if sharded(t)),
        "teachers_in_model": sorted(n for n, t in teachers.items() if any(m is t for m in model.modules())),
    }
    with open(f"{path}.{os.environ['RANK']}.json", "w") as f:
        json.dump(facts, f)


if __name__ == "__main__":
    engine.Accelerator = fsdp_accelerator
    real_build_models = train_module.build_models
    train_module.build_models = recording_build_models
    sys.argv[0] = "vldistill"
    try:
        main()
    finally:
        if os.environ.get("VLDISTILL_FSDP_REPORT") and "model" in seen:
            write_report(os.environ["VLDISTILL_FSDP_REPORT"])
