"""A student saved by vldistill, used outside vldistill: transformers' own classes (fusion) or the
dual student's own ``from_pretrained``, giving the answers ``vldistill eval`` gives; and the command
line journeys with a user's checkpoint that must end in one line (exit 2), not a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_configs import tiny_tree
from transformers import AutoProcessor, ViltForQuestionAnswering, ViltProcessor

from vldistill.cli import main
from vldistill.config import cache_dir, parse_config
from vldistill.errors import ConfigError
from vldistill.models.dual import DualEncoderStudent
from vldistill.models.students import StudentConfig, build_student, load_student, save_student, student_processor
from vldistill.training.train import train


def _run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["vldistill", *args])
    main()


@pytest.fixture(scope="module")
def trained_vqa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny VQA run on the generated world: its ``final/`` folder and its config tree."""
    tree = tiny_tree("vqa", "none", data={"max_eval": None})
    run = tmp_path_factory.mktemp("vqa") / "run"
    train(parse_config(tree, "t"), run, show_progress=False)
    return run / "final", tree


def test_transformers_alone_gives_vldistill_eval_answers(trained_vqa, tmp_path: Path, monkeypatch) -> None:
    import yaml

    final, tree = trained_vqa
    config = tmp_path / "vqa.yaml"
    config.write_text(yaml.safe_dump(tree))
    _run_cli(monkeypatch, "eval", str(final), str(config), "--out", str(tmp_path / "eval"))
    theirs = {
        r["question_id"]: r["answer"] for r in json.loads((tmp_path / "eval" / "predictions-eval.json").read_text())
    }

    processor = ViltProcessor.from_pretrained(final)
    assert isinstance(AutoProcessor.from_pretrained(final), ViltProcessor)
    model = ViltForQuestionAnswering.from_pretrained(final).eval()
    root = cache_dir() / "world" / "scale-0.1" / "base" / "vqa"
    questions = json.loads((root / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    images = [Image.open(root / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg").convert("RGB") for q in questions]
    inputs = processor(
        images=images, text=[q["question"] for q in questions], return_tensors="pt", padding=True, truncation=True
    )
    with torch.no_grad():
        best = model(**inputs).logits.argmax(-1).tolist()
    ours = {q["question_id"]: model.config.id2label[b] for q, b in zip(questions, best, strict=True)}
    assert len(ours) == 150 and ours == theirs  # every val2014 question of the world at scale 0.1


def test_saved_dual_student_loads_with_its_own_class(tiny_student, make_inputs, tiny_sizes, tmp_path: Path) -> None:
    model = tiny_student("dual", "vqa").eval()
    save_student(model, tmp_path / "dual", student_processor(StudentConfig(kind="dual", **tiny_sizes)))
    card = (tmp_path / "dual" / "README.md").read_text()
    assert "DualEncoderStudent.from_pretrained(folder)" in card and "Processor.from_pretrained(folder)" in card
    again = DualEncoderStudent.from_pretrained(tmp_path / "dual").eval()
    assert (again.task, again.config.id2label) == ("vqa", model.config.id2label)
    inputs = make_inputs("vqa")
    with torch.no_grad():
        assert torch.equal(again(inputs).logits, model(inputs).logits)


def test_fusion_model_card_names_transformers_classes(tiny_student, tmp_path: Path) -> None:
    save_student(tiny_student("fusion", "snli_ve"), tmp_path / "ve")
    card = (tmp_path / "ve" / "README.md").read_text()
    assert "ViltForImagesAndTextClassification.from_pretrained(folder)" in card
    assert "ViltProcessor.from_pretrained(folder)" in card


def test_eval_of_a_student_on_another_task_is_refused(trained_vqa, tmp_path: Path, monkeypatch, capsys) -> None:
    """A VQA student scored on SNLI-VE data gave 33.33 (one class always); now one line, exit 2."""
    import yaml

    final, tree = trained_vqa
    config = tmp_path / "ve.yaml"
    config.write_text(yaml.safe_dump({**tree, "data": {**tree["data"], "task": "snli_ve"}}))
    with pytest.raises(SystemExit) as ended:
        _run_cli(monkeypatch, "eval", str(final), str(config), "--out", str(tmp_path / "eval"))
    assert ended.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {final} is a vqa student (vldistill_student.json) but data.task is snli_ve; fix: "
        "--set data.task=vqa (with that task's data), or give a snli_ve student"
    ]
    assert not (tmp_path / "eval").exists()


def test_load_student_checks_task_and_text_length(tiny_sizes, tmp_path: Path) -> None:
    short = StudentConfig(**{**tiny_sizes, "max_text_len": 12})
    save_student(build_student(short, "vcr", 4), tmp_path / "vcr")
    assert load_student(tmp_path / "vcr", task="vcr", max_text_len=12).task == "vcr"
    with pytest.raises(
        ConfigError, match=r"^.*/vcr is a vcr student \(vldistill_student.json\) but data.task is nlvr2"
    ):
        load_student(tmp_path / "vcr", task="nlvr2")
    with pytest.raises(ConfigError) as err:
        load_student(tmp_path / "vcr", max_text_len=40)
    assert str(err.value) == (
        f"student.max_text_len 40 is more than the 12 text positions of the student in {tmp_path / 'vcr'}; "
        "fix: --set student.max_text_len=12"
    )


@pytest.mark.parametrize("case", ["bert_folder", "short_positions"])
def test_plan_with_an_unfit_checkpoint_is_one_line(case, minilm_path, tiny_sizes, tmp_path, monkeypatch, capsys):
    """A BERT folder as a ViLT student (was: NaN losses) and 40 tokens into 12 positions (was: RuntimeError)."""
    if case == "bert_folder":
        pretrained, expected = minilm_path, f"error: student.pretrained '{minilm_path}' is a bert checkpoint, not ViLT"
    else:
        short = StudentConfig(**{**tiny_sizes, "max_text_len": 12})
        pretrained = save_student(build_student(short, "vcr", 4), tmp_path / "s", student_processor(short))
        expected = (
            f"error: student.max_text_len 40 is more than the 12 text positions of student.pretrained '{pretrained}'; "
            "fix: --set student.max_text_len=12"
        )
    with pytest.raises(SystemExit) as ended:
        _run_cli(
            monkeypatch,
            "plan",
            "--preset",
            "smoke",
            "--set",
            "data.world_scale=0.1",
            "--set",
            "data.task=vcr",
            "--set",
            f"student.pretrained={pretrained}",
        )
    assert ended.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
