"""FSDP through accelerate's own config: the shipped config, the launches refused, and a real FSDP2 run on CPU.

accelerate 1.16 does not shard on CPU (a CPU launch of an FSDP config trains with DDP), so vldistill
refuses that launch; torch's FSDP2 does run over gloo, and ``tests/fsdp_cpu.py`` turns accelerate's FSDP
on for CPU processes, so that the loop's FSDP code (sharding in ``prepare``, gathering for the main
process's evaluation and checkpoints, sharding a checkpoint back on resume) runs here as on GPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from tiny_configs import tiny_tree

from vldistill.config import PRESETS_DIR, load_config
from vldistill.errors import ConfigError
from vldistill.training.engine import make_accelerator
from vldistill.training.sharding import check_launch
from vldistill.training.train import train

FSDP_CONFIG = PRESETS_DIR / "accelerate" / "fsdp.yaml"
HARNESS = Path(__file__).with_name("fsdp_cpu.py")


def test_the_fsdp_config_loads_with_accelerates_own_loader():
    config = load_config_from_file(str(FSDP_CONFIG))
    assert config.distributed_type == DistributedType.FSDP
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "ViltLayer"
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert not config.use_cpu


def test_an_fsdp_launch_on_cpu_is_refused(tmp_path, monkeypatch):
    """What ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` sets, on a machine without GPU."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ConfigError) as refused:
        make_accelerator("no", tmp_path)
    message = str(refused.value)
    assert "shards with FSDP only on GPUs" in message and "silently train unsharded with DDP" in message
    assert "fix: on CPU launch with torchrun --nproc_per_node N -m vldistill train" in message


@pytest.mark.parametrize(
    ("fsdp_version", "supported", "refusal"),
    [(1, True, "fsdp_version 1: vldistill supports FSDP2 only"), (2, False, "not supported by vldistill pretrain")],
)
def test_fsdp_launches_the_loop_cannot_honour_are_refused(monkeypatch, fsdp_version, supported, refusal):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        is_fsdp2=fsdp_version == 2,
        state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version)),
    )
    with pytest.raises(ConfigError, match=refusal):
        check_launch(accelerator, supported=supported, command="pretrain")  # type: ignore[arg-type]


def _launch(prefix: list[str], config: Path, out: Path, *extra: str, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [*prefix, "train", str(config), "--out", str(out), "--no-progress", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_fsdp_over_two_cpu_processes_matches_one_process_and_resumes_bit_exact(tmp_path):
    """FSDP2 (accelerate's, over gloo) gives one process's updates, keeps the teachers whole, and resumes exactly.

    MAD with two teachers, 3 steps of a global batch of 8, a checkpoint each step, a dev evaluation at
    steps 2 and 3 (model selection keeps a copy of the best weights, gathered from the shards).
    """
    tree = tiny_tree(
        "snli_ve",
        "mad",
        ("vision", "text"),
        train={"epochs": 1, "batch_size": 8, "checkpoint_every": 1, "keep_checkpoints": 5, "eval_every": 2},
    )
    config = tmp_path / "mad.yaml"
    config.write_text(yaml.safe_dump(tree))
    report = tmp_path / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLDISTILL_FSDP_REPORT": str(report)}
    bin_dir = Path(sys.executable).parent
    fsdp = [str(bin_dir / "accelerate"), "launch", "--config_file", str(FSDP_CONFIG), "--num_processes", "2"]
    fsdp += ["--main_process_port", "29565", str(HARNESS)]
    # in this process (no start-up cost), read from the same file: the teachers in the order the launch builds them
    train(load_config(config), tmp_path / "one", show_progress=False)
    _launch(fsdp, config, tmp_path / "fsdp", env=env)

    for rank in (0, 1):
        facts = json.loads(Path(f"{report}.{rank}.json").read_text())
        assert facts["model_is_fsdp"] and facts["sharded_parameters"] == facts["parameters"] > 0  # really FSDP
        assert facts["teachers"] == ["text", "vision"]
        assert facts["sharded_teachers"] == facts["teachers_in_model"] == []  # teachers: whole, outside prepare()

    # the selected student, and the last checkpoint (student, projections, the selection's copy of the best)
    for name in ("final/model.safetensors", "checkpoints/step-00000003/weights.safetensors"):
        one, two = load_file(str(tmp_path / "one" / name)), load_file(str(tmp_path / "fsdp" / name))
        assert one.keys() == two.keys()
        # the same updates up to the order of float additions in the gradient reduce-scatter
        assert max(float((one[k] - two[k]).abs().max()) for k in one if one[k].is_floating_point()) < 1e-5, name
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "fsdp")]
    assert [(s["processes"], s["steps"], s["dev_evaluations"]) for s in summaries] == [(1, 3, 2), (2, 3, 2)]
    assert summaries[0]["best_step"] == summaries[1]["best_step"]

    # Resume from the step-1 checkpoint (whole tensors, sharded again as they load): bit for bit the same run.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed)
    for later in ("step-00000002", "step-00000003"):
        shutil.rmtree(resumed / "checkpoints" / later)
    shutil.rmtree(resumed / "final")
    _launch([*fsdp[:-2], "29566", str(HARNESS)], config, resumed, "--resume", env=env)
    for name in ("final/model.safetensors", "checkpoints/step-00000003/weights.safetensors"):
        a, b = load_file(str(tmp_path / "fsdp" / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (
        torch.load(run / "checkpoints/step-00000003/state.pt", weights_only=True)
        for run in (tmp_path / "fsdp", resumed)
    )
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert all(
        torch.equal(a["optimizer"]["state"][p][m], b["optimizer"]["state"][p][m])
        for p in a["optimizer"]["state"]
        for m in ("exp_avg", "exp_avg_sq", "step")
    )
