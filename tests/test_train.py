"""The training engine: smoke preset, determinism, resume after a kill, corrupt checkpoints, NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_configs import tiny_tree

from vldistill import checkpoint as ckpt
from vldistill.config import parse_config
from vldistill.train import NumericsError, train


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cfg(**train):
    return parse_config(
        tiny_tree("snli_ve", "mad", ("vision", "text"), train={"epochs": 2, "checkpoint_every": 2, **train}), "test"
    )


def test_smoke_preset_through_the_cli(tmp_path):
    out = tmp_path / "smoke"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vldistill",
            "train",
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "data.world_scale=0.1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "vqa_accuracy" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["eval"]) == {"eval", "shifted"}
    assert (out / "final" / "model.safetensors").is_file() and (out / "subset.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 1 and rows[-1]["train_task"] > 0
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


def test_cpu_training_is_deterministic(tmp_path):
    a = train(_cfg(), tmp_path / "a", show_progress=False)
    b = train(_cfg(), tmp_path / "b", show_progress=False)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    scores = lambda s: {k: {m: v for m, v in ms.items() if m != "ms_per_example"} for k, ms in s["eval"].items()}  # noqa: E731
    assert scores(a) == scores(b)
    c = train(_cfg(seed=1), tmp_path / "c", show_progress=False)
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))
    assert c["steps"] == a["steps"]


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so nothing catches it)."""


@pytest.mark.parametrize("kill_at", ["after_step_2_checkpoint", "during_step_4_checkpoint", "mid_epoch_2"])
def test_resume_after_a_kill_gives_the_same_final_weights(tmp_path, monkeypatch, kill_at):
    reference = tmp_path / "reference"
    train(_cfg(), reference, show_progress=False)
    run = tmp_path / "run"
    real_save = ckpt.save_checkpoint
    calls = {"n": 0}

    def save(root, step, modules, state, keep=2, before_publish=None):
        calls["n"] += 1
        if kill_at == "during_step_4_checkpoint" and step == 4:

            def die(tmp):  # the temporary folder is fully written but never renamed into place
                raise _Killed

            return real_save(root, step, modules, state, keep, before_publish=die)
        result = real_save(root, step, modules, state, keep)
        if kill_at == "after_step_2_checkpoint" and step == 2:
            raise _Killed
        return result

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    if kill_at == "mid_epoch_2":
        import vldistill.train as engine

        real_loss = engine.task_loss
        seen = {"n": 0}

        def loss(*args):
            seen["n"] += 1
            if seen["n"] == 5:  # epoch 2, second batch, after the epoch-1 checkpoint
                raise _Killed
            return real_loss(*args)

        monkeypatch.setattr(engine, "task_loss", loss)
    with pytest.raises(_Killed):
        train(_cfg(), run, show_progress=False)
    monkeypatch.undo()
    assert not (run / "final").exists()
    train(_cfg(), run, resume=True, show_progress=False)
    assert _same(_weights(reference), _weights(run))


def test_corrupt_checkpoint_is_skipped_for_the_previous_one(tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(epochs=1, keep_checkpoints=5), run, show_progress=False)
    finished = _weights(run)
    steps = sorted((run / "checkpoints").glob("step-*"))
    assert [p.name for p in steps] == ["step-00000002", "step-00000003"]
    with (steps[-1] / "weights.safetensors").open("r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage\x00")
    assert "corrupt" in (ckpt.verify(steps[-1]) or "")
    train(_cfg(epochs=1, keep_checkpoints=5), run, resume=True, show_progress=False)
    out = capsys.readouterr().out
    assert "skipped checkpoint step-00000003: weights.safetensors does not match its recorded sha256" in out
    assert "resumed from step-00000002" in out
    assert _same(finished, _weights(run))  # redoing step 3 from step 2 gives the same weights


def test_nan_loss_stops_with_step_and_term_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import vldistill.train as engine

    real_loss = engine.task_loss
    seen = {"n": 0}

    def loss(*args):
        seen["n"] += 1
        value = real_loss(*args)
        return value * float("nan") if seen["n"] == 4 else value

    monkeypatch.setattr(engine, "task_loss", loss)
    run = tmp_path / "run"
    with pytest.raises(NumericsError, match=r"step 4: loss term\(s\) task not finite"):
        train(_cfg(), run, show_progress=False)
    good = sorted((run / "checkpoints").glob("step-*"))
    # epoch 1 ended at step 3 (checkpointed); the NaN came in the first step of epoch 2
    assert [p.name for p in good] == ["step-00000002", "step-00000003"]
    assert all(ckpt.verify(p) is None for p in good)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """DDP over two CPU processes (gloo): each takes half of every global batch, grads are averaged."""
    config = tmp_path / "ddp.yaml"
    import yaml

    config.write_text(yaml.safe_dump(tiny_tree("snli_ve", "none", train={"epochs": 1, "batch_size": 8})))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    runs = {
        "one": [sys.executable, "-m", "vldistill"],
        "two": [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", "29561", "-m", "vldistill"],
    }
    for name, prefix in runs.items():
        proc = subprocess.run(
            [*prefix, "train", str(config), "--out", str(tmp_path / name), "--no-progress"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    # the same updates up to the order of float additions in the gradient all-reduce
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    one_summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    two_summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (one_summary["processes"], two_summary["processes"]) == (1, 2)  # really DDP, not two lone runs
    assert one_summary["steps"] == two_summary["steps"] == 3


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    """batch 4 x 2 accumulated steps takes the same updates as batch 8 (ViLT's dropout is 0 by default)."""
    # Weights normalised to mean 1 per micro-batch (method.weight_normalize) would differ by design.
    big_cfg = _cfg(epochs=1, batch_size=8, checkpoint_every=None)
    acc_cfg = _cfg(epochs=1, batch_size=4, grad_accum=2, checkpoint_every=None)
    for cfg in (big_cfg, acc_cfg):
        cfg.method.weight_normalize = False
    big = train(big_cfg, tmp_path / "big", show_progress=False)
    acc = train(acc_cfg, tmp_path / "acc", show_progress=False)
    assert big["steps"] == acc["steps"] == 3
    a, b = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_two_ranks_build_their_own_cache_shards_and_read_all(tmp_path):
    import yaml

    cache = tmp_path / "cache"
    tree = tiny_tree(
        "snli_ve", "mad", ("vision", "text"), cache={"enabled": True, "dir": str(cache)}, train={"eval_batch_size": 4}
    )
    config = tmp_path / "mad.yaml"
    config.write_text(yaml.safe_dump(tree))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29563", "-m", "vldistill", "cache", "build", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    shards = sorted(p.name for p in folder.glob("shard-*.safetensors"))
    assert any("-r0-" in s for s in shards) and any("-r1-" in s for s in shards)
    meta = json.loads((folder / "meta.json").read_text())
    assert sorted(meta["shards"]) == shards
    from vldistill.cache import TeacherCache

    assert len(TeacherCache(folder, fp16=False).rows) == 24  # every example, whichever rank computed it


def test_dual_encoder_predictions_with_reused_image_encodings_equal_plain_ones():
    from vldistill.data.loader import ExampleDataset, collate_fn
    from vldistill.evaluate import predict
    from vldistill.experiment import build_models, load_data

    cfg = parse_config(tiny_tree("vqa", "none", student={"kind": "dual"}), "t")
    data = load_data(cfg.data)
    built = build_models(cfg, data)
    examples = data.evals["eval"].examples
    assert len({ex.images for ex in examples}) < len(examples)  # several questions per image
    loader = torch.utils.data.DataLoader(
        ExampleDataset(examples), batch_size=5, collate_fn=collate_fn(built.processor, "vqa", data.builder.answers)
    )
    reused = predict(built.student, loader, "cpu")
    plain = predict(built.student, loader, "cpu", reuse_image_encodings=False)
    assert reused == plain and len(reused) == len(examples)


def test_eval_writes_official_results_that_score_reads_back(tmp_path, monkeypatch, capsys):
    """train -> `vldistill eval` -> the official VQA results file -> `vldistill score vqa`: the same accuracy."""
    import yaml

    from vldistill.cli import main
    from vldistill.config import cache_dir
    from vldistill.metrics.vqa import load_and_evaluate

    tree = tiny_tree("vqa", "none", data={"max_eval": None})
    train(parse_config(tree, "t"), tmp_path / "run", show_progress=False)
    config = tmp_path / "vqa.yaml"
    config.write_text(yaml.safe_dump(tree))
    monkeypatch.setattr(
        sys,
        "argv",
        ["vldistill", "eval", str(tmp_path / "run" / "final"), str(config), "--out", str(tmp_path / "eval")],
    )
    main()  # returns normally on success (errors exit with status 2)
    ours = json.loads((tmp_path / "eval" / "scores.json").read_text())["eval"]["vqa_accuracy"]
    root = cache_dir() / "world" / "scale-0.1" / "base" / "vqa"
    official = load_and_evaluate(
        root / "v2_OpenEnded_mscoco_val2014_questions.json",
        root / "v2_mscoco_val2014_annotations.json",
        tmp_path / "eval" / "predictions-eval.json",
    )
    assert official["accuracy"]["overall"] == ours
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval"]["eval"]["vqa_accuracy"] == ours  # the training run's own evaluation agrees
