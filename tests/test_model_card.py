"""The model card in RUN/final/README.md: a Hugging Face card written from the run's real values."""

from __future__ import annotations

import hashlib
import json
import re

import yaml
from huggingface_hub import ModelCard
from tiny_configs import tiny_tree
from torch import nn

from vldistill.config import parse_config
from vldistill.training.experiment import build_models, load_data
from vldistill.training.model_card import command_line, model_card
from vldistill.training.train import train


def _header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_a_runs_final_folder_explains_itself(tmp_path):
    tree = tiny_tree(
        "snli_ve",
        "kd",
        ("text",),
        data={"fraction": 0.5, "shift_root": "world:shifted", "dev_split": None},
        train={"lr": 2e-3},
    )
    cfg = parse_config(tree, "t")
    run = tmp_path / "run"
    command = "vldistill train c.yaml --out run --set train.lr=0.002"
    summary = train(cfg, run, show_progress=False, command=command)
    path = run / "final" / "README.md"
    text = path.read_text()

    # the YAML header parses, as yaml and as the Hub's card metadata, and holds the run's scores
    header = _header(text)
    assert header["library_name"] == "transformers" and header["datasets"] == ["snli_ve"]
    assert header["metrics"] == ["accuracy"] and {"vldistill", "snli_ve", "kd"} <= set(header["tags"])
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers" and card.data.model_name == "test-snli_ve-kd"
    results = {r.dataset_config: (r.task_type, r.dataset_split, r.metric_value) for r in card.data.eval_results}
    assert results == {
        "eval": ("visual-entailment", "test", summary["eval"]["eval"]["accuracy"]),
        "shifted": ("visual-entailment", "test", summary["eval"]["shifted"]["accuracy"]),
    }

    # the results beside their image-shuffle controls, as the run's summary has them
    for split in ("eval", "shifted"):
        score, control = summary["eval"][split]["accuracy"], summary["eval"][f"{split}:shuffled"]["accuracy"]
        assert f"| {split} | {score} | {control} | {score - control:+.2f} |" in text
    assert "Text-only prior: not measured with this run" in text

    # the teacher and its fingerprint: the one the run's teacher has (rebuilt as train, plan and cache build do)
    teacher = build_models(cfg, load_data(cfg.data, verbose=False)).method.teachers["text"]
    assert f"| text | text | tiny, randomly initialised | `{teacher.fingerprint()}` |" in text
    assert 'selection "all"' in text and 'weighting "constant"' in text  # kd's switches as applied

    # the data: splits, the low-shot subset and its manifest, copied beside the card
    manifest = (run / "subset.json").read_bytes()
    assert (run / "final" / "subset.json").read_bytes() == manifest
    records = json.loads(manifest)["records"]
    assert f"a low-shot subset of {records} records (fraction 0.5, max_train 24, subset_seed 0)" in text
    assert hashlib.sha256(manifest).hexdigest() in text
    assert f"Training split `train`: {summary['train_examples']} examples." in text
    assert "Evaluation: split `test`, and `world:shifted` (domain shift)" in text

    # the command, the resolved config (it parses back to the run's), how to load it with transformers
    assert f"```text\n{command}\n```" in text
    embedded = re.search(r"```yaml\n(.*?)\n```", text, re.S)
    assert embedded is not None and parse_config(yaml.safe_load(embedded.group(1)), "card") == cfg
    assert "ViltForImagesAndTextClassification.from_pretrained(folder)" in text


def test_a_prior_and_a_dual_student_load_with_vldistill():
    cfg = parse_config(tiny_tree("vqa", student={"kind": "prior"}), "t")
    summary = {
        "eval": {"eval": {"vqa_accuracy": 33.8}},
        "train_examples": 24,
        "steps": 3,
        "best_step": 3,
        "dev_evaluations": 0,
        "processes": 1,
        "seconds": 1.5,
    }
    args = {"switches": {"method": "none"}, "teachers": {}, "student": nn.Linear(2, 3), "manifest": None}
    text = model_card(cfg, summary, command="vldistill train p.yaml", **args)
    header = _header(text)
    assert header["library_name"] == "vldistill" and "pipeline_tag" not in header
    assert "| eval | 33.8 |  |  |" in text and "the text-only prior itself" in text
    assert "No teachers" in text and "9 parameters" in text and "TextPriorStudent.from_pretrained" in text
    dual = parse_config(tiny_tree("vqa", student={"kind": "dual"}), "t")
    assert "DualEncoderStudent.from_pretrained(folder)" in model_card(dual, summary, command="x", **args)


def test_the_command_is_recorded_as_it_was_typed():
    assert command_line(["/venv/bin/vldistill", "train", "--out", "my runs/a"]) == "vldistill train --out 'my runs/a'"
    main = "/src/vldistill/__main__.py"
    assert command_line([main, "train", "--preset", "smoke"]) == "python -m vldistill train --preset smoke"
