"""Experiment trackers (``train.log_with``): TensorBoard by default, accelerate's others offline, hparams read back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tiny_configs import tiny_tree

from vldistill.config import parse_config
from vldistill.errors import ConfigError
from vldistill.training.trackers import flat_hparams, tracker_names
from vldistill.training.train import train


def _tensorboard_hparams(run: Path) -> dict:
    """The hyperparameters TensorBoard's HPARAMS tab shows for ``run`` (its session_start_info), read back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    found = []
    for events in (run / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        try:
            content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        except KeyError:  # the scalars' events file
            continue
        if metadata.SESSION_START_INFO_TAG in content:
            info = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
            found.append({k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()})
    assert len(found) == 1, found
    return found[0]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard" / "vldistill"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _kd_tree(**train_options) -> dict:
    return tiny_tree(
        "snli_ve", "kd", ("text",), method_options={"top_k": 3}, train={"log_every": 1, "lr": 2e-3, **train_options}
    )


def test_tensorboard_is_the_default_and_gets_the_resolved_config_and_the_switches(tmp_path):
    cfg = parse_config(_kd_tree(), "t")
    assert cfg.train.log_with == ["tensorboard"]
    run = tmp_path / "run"
    summary = train(cfg, run, show_progress=False)
    hparams = _tensorboard_hparams(run)
    # the resolved config, flattened: a default the YAML never wrote (train.weight_decay) is there too
    assert hparams["data.task"] == "snli_ve" and hparams["method.name"] == "kd"
    assert hparams["train.lr"] == pytest.approx(2e-3) and hparams["train.weight_decay"] == pytest.approx(0.01)
    assert hparams["method.teachers.text.kind"] == "text" and hparams["method.teachers.text.tiny.hidden_size"] == 32
    assert json.loads(hparams["data.ve_prompts"]) == list(cfg.data.ve_prompts)
    # the switches as the method applies them: kd's selection and weighting (None in the config)
    assert (hparams["switches.selection"], hparams["switches.weighting"]) == ("all", "constant")
    assert hparams["switches.top_k"] == 3 and "method.selection" not in hparams  # None: left out by TensorBoard
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "step"]
    scalars = _scalars(run)
    assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in steps]
    assert [s for s, _ in scalars["dev/accuracy"]] == [summary["steps"]]  # SNLI-VE selects on its dev split


def test_a_tracker_that_is_not_installed_is_one_line_naming_the_key_and_the_pip_install(tmp_path, monkeypatch, capsys):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from reliability.corpus_files import assert_one_line_error, run_cli, write_config

    available = {str(t) for t in get_available_trackers()}
    missing = next((n for n in sorted(LOGGER_TYPE_TO_CLASS) if n not in available), None)
    if missing is None:
        pytest.skip("every tracker of accelerate is installed here")
    config = write_config(tmp_path / "c.yaml", tiny_tree("snli_ve"))
    args = ["train", str(config), "--out", str(tmp_path / "run"), "--set", f"train.log_with=[tensorboard, {missing}]"]
    line = assert_one_line_error(run_cli(args, monkeypatch, capsys), ("train.log_with", f"pip install {missing}"))
    assert f"'{missing}' needs the {missing} package, which is not installed" in line
    assert not (tmp_path / "run").exists()  # refused before the run folder is touched
    with pytest.raises(ConfigError, match=r"train\.log_with\.0: Input should be 'tensorboard', 'wandb'"):
        parse_config(tiny_tree("snli_ve", train={"log_with": "tensorbord"}), "t")
    assert tracker_names("all") == ["all"] and tracker_names([]) == []


def test_hparams_are_flat_scalars_and_strings():
    flat = flat_hparams({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None, "f": {}, "g": True})
    assert flat == {"a.b.c": 1, "a.d": "[1, 2]", "e": None, "g": True}


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mlflow", "sqlalchemy", "alembic")),
    reason="optional tracker: pip install mlflow (its local database store needs sqlalchemy and alembic)",
)
def test_mlflow_offline_gets_the_config_and_the_metrics(tmp_path, monkeypatch):
    """MLflow with a local database store (``MLFLOW_TRACKING_URI``), beside TensorBoard; read back with its client."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tmp_path / "run"
    train(parse_config(_kd_tree(log_with=["tensorboard", "mlflow"]), "t"), run, show_progress=False)
    client = mlflow.tracking.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("vldistill").experiment_id])
    assert found.info.run_name == "test-snli_ve-kd"
    assert found.data.params["data.task"] == "snli_ve" and found.data.params["switches.selection"] == "all"
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "step"]
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in steps]
    assert _tensorboard_hparams(run)["data.task"] == "snli_ve"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="optional tracker: pip install wandb")
def test_wandb_runs_offline_into_the_run_folder(tmp_path, monkeypatch):
    """W&B offline (no ``WANDB_MODE`` set): its run is written under RUN/wandb/, config and history inside."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(parse_config(_kd_tree(log_with="wandb"), "t"), run, show_progress=False)
    (store,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    # W&B's offline store is a log of protobuf records: keys and JSON values are there as bytes
    data = store.read_bytes()
    assert all(key in data for key in (b"data.task", b'"snli_ve"', b"switches.selection", b"train/loss"))
    assert not (run / "tensorboard").exists()  # only the trackers asked for
