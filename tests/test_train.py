"""The training engine: smoke preset, determinism, resume after a kill, corrupt checkpoints, NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.training import checkpoint as ckpt
from vldistill.training.train import NumericsError, train


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
    assert set(summary["eval"]) == {"eval", "shifted", "eval:shuffled", "shifted:shuffled"}
    assert (summary["best_step"], summary["dev_evaluations"], "dev" in summary) == (summary["steps"], 0, False)
    assert (out / "final" / "model.safetensors").is_file() and (out / "subset.json").is_file()
    card = (out / "final" / "README.md").read_text()  # the model card records the command that made it
    assert f"python -m vldistill train --preset smoke --out {out} --no-progress --set data.world_scale=0.1" in card
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 1 and rows[-1]["train_task"] > 0
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["world_scale"] == 0.1  # the --set value
    assert "Loading weights" not in proc.stderr and "nan" not in proc.stderr

    # `vldistill eval RUN`: no config needed (RUN/config.yaml), the run's final/ student, no loading bars
    proc = subprocess.run(
        [sys.executable, "-m", "vldistill", "eval", str(out), "--out", str(tmp_path / "eval")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Loading weights" not in proc.stderr and "%|" not in proc.stderr, proc.stderr
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    # the same metrics, breakdowns and image-shuffle controls as the training run's own evaluation
    assert _untimed(scores) == _untimed(summary["eval"])
    assert {k.split("/")[1] for k in scores["eval"] if "/" in k} == {"answer_type", "question_type"}


def _untimed(splits: dict) -> dict:
    """Scores without the timings (``ms_per_example``, ``deploy_ms_per_example``), which vary run to run."""
    return {k: {m: v for m, v in ms.items() if not m.endswith("ms_per_example")} for k, ms in splits.items()}


def test_cpu_training_is_deterministic(tmp_path):
    a = train(_cfg(), tmp_path / "a", show_progress=False)
    b = train(_cfg(), tmp_path / "b", show_progress=False)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert _untimed(a["eval"]) == _untimed(b["eval"])
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
        import vldistill.training.train as engine

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


def test_a_student_with_dropout_resumes_mid_epoch_to_the_same_weights(tmp_path, monkeypatch):
    """The dual student's towers use dropout, so the resumed run must replay the global random stream exactly.

    (Iterating a DataLoader draws a seed for its workers; from the global stream, the resumed run's
    extra iteration shifted every later dropout mask.)
    """
    cfg = parse_config(tiny_tree("snli_ve", student={"kind": "dual"}, train={"epochs": 2, "checkpoint_every": 1}), "t")
    train(cfg, tmp_path / "reference", show_progress=False)
    real_save = ckpt.save_checkpoint

    def save(root, step, *args, **kwargs):
        result = real_save(root, step, *args, **kwargs)
        if step == 4:  # the first step of epoch 2 (3 steps per epoch)
            raise _Killed
        return result

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    with pytest.raises(_Killed):
        train(cfg, tmp_path / "run", show_progress=False)
    monkeypatch.undo()
    train(cfg, tmp_path / "run", resume=True, show_progress=False)
    assert _same(_weights(tmp_path / "reference"), _weights(tmp_path / "run"))


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


@pytest.mark.parametrize(("nan_at", "kept"), [(4, ["step-00000002", "step-00000003"]), (1, [])])
def test_a_nan_loss_stops_with_step_and_term_and_says_what_was_kept(nan_at, kept, tmp_path, monkeypatch):
    import vldistill.training.train as engine

    real_loss = engine.task_loss
    seen = {"n": 0}

    def loss(*args):
        seen["n"] += 1
        value = real_loss(*args)
        return value * float("nan") if seen["n"] == nan_at else value

    monkeypatch.setattr(engine, "task_loss", loss)
    run = tmp_path / "run"
    with pytest.raises(NumericsError) as stop:
        train(_cfg(), run, show_progress=False)
    good = sorted((run / "checkpoints").glob("step-*"))
    assert [p.name for p in good] == kept
    assert all(ckpt.verify(p) is None for p in good)
    fix = "fix: lower train.lr or the term's weight, then rerun with --overwrite (--resume may not change them)"
    if kept:  # epoch 1 ended at step 3 (checkpointed); the NaN came in the first step of epoch 2
        kept_line = f"the last good checkpoint, {run / 'checkpoints' / kept[-1]}, is intact"
    else:  # the very first step: nothing was saved
        kept_line = "no checkpoint was written (none before step 1)"
    assert str(stop.value) == f"step {nan_at}: loss term(s) task not finite; {kept_line}; {fix}"


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
        # no per-rank DDP warning (find_unused_parameters is asked for only when some parameter is unused)
        assert "Warning" not in proc.stderr and "warning" not in proc.stderr, proc.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    # the same updates up to the order of float additions in the gradient all-reduce
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    one_summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    two_summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (one_summary["processes"], two_summary["processes"]) == (1, 2)  # really DDP, not two lone runs
    assert one_summary["steps"] == two_summary["steps"] == 3


def test_gradient_accumulation_matches_the_larger_batch_last_window_included(tmp_path):
    """88 examples: batch 8 x 2 accumulated takes the updates of batch 16, whose last batch holds 8 examples.

    Each epoch ends with a window of one micro-batch; it must count as a whole step (before the fix it
    was halved, and the weights ended 2e-4 away). ViLT's dropout is 0 by default, so the two runs differ
    only by float summation order.
    """
    tree = {"data": {"max_train": 88}}
    train_tree = {"epochs": 2, "checkpoint_every": None, "log_every": 1}
    big_cfg = parse_config(tiny_tree("snli_ve", train={**train_tree, "batch_size": 16}, **tree), "t")
    acc_cfg = parse_config(tiny_tree("snli_ve", train={**train_tree, "batch_size": 8, "grad_accum": 2}, **tree), "t")
    big = train(big_cfg, tmp_path / "big", show_progress=False)
    acc = train(acc_cfg, tmp_path / "acc", show_progress=False)
    assert big["steps"] == acc["steps"] == 12  # 6 steps per epoch: the schedule is the same
    a, b = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    big_rows, acc_rows = (_step_rows(tmp_path / name) for name in ("big", "acc"))
    assert [r["lr"] for r in big_rows] == [r["lr"] for r in acc_rows]
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(big_rows, acc_rows, strict=True))


def _step_rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "step"]


def test_lr_loss_and_gradient_norm_are_logged_every_log_every_steps(tmp_path):
    """Six steps (48 examples / 8), logged at 2, 4, 6 in metrics.jsonl and TensorBoard; epoch rows unchanged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = parse_config(
        tiny_tree("snli_ve", data={"max_train": 48}, train={"log_every": 2, "warmup_ratio": 0, "max_grad_norm": 1e-3}),
        "t",
    )
    run = tmp_path / "run"
    train(cfg, run, show_progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6] and rows[-1]["epoch"] == 1 and "kind" not in rows[-1]
    assert set(rows[-1]) == {"epoch", "step", "train_task", "eval", "seconds"}
    # linear decay from 1e-3 over 6 steps, no warmup: step k uses 1e-3 * (6 - (k - 1)) / 6
    assert [r["lr"] for r in steps] == pytest.approx([1e-3 * 5 / 6, 1e-3 * 3 / 6, 1e-3 * 1 / 6])
    assert all(r["loss"] == r["train_task"] for r in steps)  # method none: the task term is the loss
    assert all(r["grad_norm"] > 1e-3 for r in steps)  # measured before clipping to max_grad_norm
    (events,) = (run / "tensorboard" / "vldistill").glob("events.out.tfevents.*")  # the hparams: one level down
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    for tag, key in (("train/lr", "lr"), ("train/loss", "loss"), ("train/grad_norm", "grad_norm")):
        logged = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in steps], tag


def test_a_run_keeps_its_config_and_a_resume_refuses_changes_that_matter(tmp_path, capsys):
    from vldistill.errors import ConfigError

    run = tmp_path / "run"
    train(_cfg(epochs=1), run, show_progress=False)
    assert parse_config(yaml.safe_load((run / "config.yaml").read_text()), "saved") == _cfg(epochs=1)
    with pytest.raises(ConfigError, match=r"--resume with a changed config: train\.lr \(0\.001 -> 0\.002\)"):
        train(_cfg(epochs=1, lr=2e-3), run, resume=True, show_progress=False)
    with pytest.raises(ConfigError, match=r"holds a run .*fix: add --resume to continue it, --overwrite"):
        train(_cfg(epochs=1), run, show_progress=False)
    capsys.readouterr()
    train(_cfg(epochs=1, log_every=2, eval_batch_size=4), run, resume=True, show_progress=False)
    said = capsys.readouterr().out
    assert (
        "config changed since the checkpoint (allowed): train.eval_batch_size (16 -> 4), train.log_every (1 -> 2)"
        in said
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["log_every"] == 2


def test_overwrite_replaces_the_old_run_entirely(tmp_path, monkeypatch, capsys):
    """Through the CLI: refused with exit 2 and one line; --overwrite leaves one run's events and rows."""
    from reliability.corpus_files import assert_one_line_error, run_cli, write_config

    config = write_config(tmp_path / "c.yaml", tiny_tree("snli_ve", train={"epochs": 1}))
    run = tmp_path / "run"
    args = ["train", str(config), "--out", str(run), "--no-progress"]
    assert run_cli(args, monkeypatch, capsys).code == 0
    (run / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli(args, monkeypatch, capsys), (str(run), "already holds a run", "--overwrite"))
    assert run_cli([*args, "--overwrite", "--set", "train.seed=1"], monkeypatch, capsys).code == 0
    board = run / "tensorboard" / "vldistill"  # one run's events: its scalars and its hyperparameters
    assert len(list(board.glob("events.out.tfevents.*"))) == len(list(board.glob("*/events.out.tfevents.*"))) == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # SNLI-VE selects on its dev split: one dev evaluation at the last step, logged before that step's row
    assert [r.get("kind", "epoch") for r in rows] == ["step", "step", "dev", "step", "epoch"]
    assert (run / "notes.txt").read_text() == "mine"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1


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
    assert sorted(n for names in meta["shards"].values() for n in names) == shards  # images, texts, examples
    from vldistill.training.cache import TeacherCache

    assert len(TeacherCache(folder, fp16=False).rows) == 24  # every example, whichever rank computed it


def test_dual_encoder_predictions_with_reused_image_encodings_equal_plain_ones():
    from vldistill.data.loader import ExampleDataset, collate_fn
    from vldistill.training.evaluate import predict
    from vldistill.training.experiment import build_models, load_data

    cfg = parse_config(tiny_tree("vqa", "none", student={"kind": "dual"}), "t")
    data = load_data(cfg.data)
    built = build_models(cfg, data)
    # The world has one question per picture; ask every question of the first four pictures, as VQA
    # asks several questions of each image.
    given = data.evals["eval"].examples
    examples = [replace(ex, images=given[k % 4].images) for k, ex in enumerate(given)]
    assert len({ex.images for ex in examples}) == 4 < len(examples)
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


def test_a_run_refused_before_its_first_step_leaves_nothing_that_blocks_the_corrected_command(
    tmp_path, monkeypatch, capsys
):
    """config.yaml is written before data and models are built; a refusal there (here: a data root that
    does not exist) must not make the corrected command need --overwrite: nothing of a run is there."""
    from reliability.corpus_files import assert_one_line_error, run_cli, write_config

    run = tmp_path / "run"
    wrong = write_config(tmp_path / "wrong.yaml", tiny_tree("snli_ve", data={"root": str(tmp_path / "nowhere")}))
    refused = run_cli(["train", str(wrong), "--out", str(run), "--no-progress"], monkeypatch, capsys)
    assert_one_line_error(refused, (str(tmp_path / "nowhere"),))
    assert (run / "config.yaml").is_file()  # the refused run's config stays, for the user to read
    right = write_config(tmp_path / "right.yaml", tiny_tree("snli_ve", train={"epochs": 1}))
    assert run_cli(["train", str(right), "--out", str(run), "--no-progress"], monkeypatch, capsys).code == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == "world"
