"""The text-only prior (``student.kind: prior``): its hash, its outputs, what it learns through the training
engine on hand-made VQA sets, saving and loading, and the config rule that no method applies to it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_configs import tiny_tree

from vldistill.cli import main
from vldistill.config import parse_config
from vldistill.errors import ConfigError
from vldistill.models.prior import PADDING_BUCKET, TextPriorStudent, ngram_buckets
from vldistill.models.students import STUDENT_FILE, StudentConfig, build_student, load_student, save_student
from vldistill.training.train import train

MINSTD = 2**31 - 1


def _bucket(key: int, buckets: int) -> int:
    return 1 + (key % MINSTD) * 48271 % MINSTD % (buckets - 1)


def test_ngram_buckets_are_the_documented_hash() -> None:
    ids = torch.tensor([[101, 7, 102, 0], [101, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    got = ngram_buckets(ids, mask, 1000).tolist()
    bigram = lambda a, b: (a + 1) * 2**20 + b  # noqa: E731
    assert got[0] == [
        _bucket(101, 1000),
        _bucket(7, 1000),
        _bucket(102, 1000),
        PADDING_BUCKET,
        _bucket(bigram(101, 7), 1000),
        _bucket(bigram(7, 102), 1000),
        PADDING_BUCKET,
    ]
    assert got[0] == [252, 236, 571, 0, 49, 475, 0]  # the numbers, written out once
    assert got[1] == [252, 571, 0, 0, _bucket(bigram(101, 102), 1000), 0, 0]
    # the order of a bigram matters; every real n-gram lands in 1 .. buckets-1, never on padding
    assert _bucket(bigram(7, 101), 1000) != _bucket(bigram(101, 7), 1000)
    assert ngram_buckets(torch.arange(500).view(1, -1), torch.ones(1, 500), 7).min() >= 1
    with pytest.raises(ValueError, match="at least 2"):
        ngram_buckets(ids, mask, 1)


@pytest.mark.parametrize(("task", "views"), [("vqa", 1), ("snli_ve", 1), ("vcr", 4), ("nlvr2", 2)])
def test_outputs_of_each_task_ignore_the_image(task, views, make_inputs, num_labels, answers) -> None:
    torch.manual_seed(0)
    cfg = StudentConfig(kind="prior", hidden_size=16, buckets=512)
    model = build_student(cfg, task, num_labels[task], answers if task == "vqa" else None)
    assert isinstance(model, TextPriorStudent) and model.config.buckets == 512
    inputs = make_inputs(task)
    out = model.eval()(inputs)
    batch, length = 2, inputs.input_ids.shape[1]
    assert out.logits.shape == (batch, num_labels[task])
    assert out.pooled.shape == (batch * views, 16) and out.text_tokens.shape == (batch * views, length, 16)
    assert out.image_tokens.shape == (batch * views, 0, 16) and out.image_mask.shape == (batch * views, 0)
    assert out.image_grid == (0, 0) and out.cls_attention is None and out.cross_attention is None
    assert out.text_hidden_states is None and out.image_hidden_states is None
    if task == "nlvr2":  # both views read the one statement
        assert torch.equal(out.pooled[0], out.pooled[1])
    # other pixels, same logits: the prior never reads the image
    inputs.pixel_values = torch.randn_like(inputs.pixel_values)
    assert torch.equal(model(inputs).logits, out.logits)
    with pytest.raises(ValueError, match="no cross-modal attention"):
        model(inputs, output_cross_attention=True)


def _write_vqa(root: Path, split: str, items: list[tuple[str, str]], first_id: int) -> None:
    """Official VQA v2 files of ``split``: one question per ``(question, answer)``, 10 identical answers each."""
    questions, annotations = [], []
    for n, (question, answer) in enumerate(items):
        qid = first_id + n
        questions.append({"image_id": qid, "question": question, "question_id": qid})
        answers = [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]
        annotations.append(
            {
                "question_id": qid,
                "image_id": qid,
                "question_type": "what color is the",
                "answer_type": "other",
                "multiple_choice_answer": answer,
                "answers": answers,
            }
        )
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (90, 90, 90)).save(root / split / f"COCO_{split}_{qid:012d}.jpg")
    common = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": split}
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps(common | {"questions": questions}))
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps(common | {"annotations": annotations}))


def _train_prior(root: Path, out: Path) -> dict:
    tree = tiny_tree(
        "vqa",
        data={"root": str(root), "max_train": None, "max_eval": None},
        student={"kind": "prior", "hidden_size": 16, "buckets": 4096},
        train={"epochs": 20, "batch_size": 4, "lr": 1e-2, "threads": 1},
    )
    return train(parse_config(tree, "prior"), out, show_progress=False)


KEYWORDS = {"apple": "red", "sky": "blue", "grass": "green", "banana": "yellow"}
FRAMES = ["what colour is the {} ?", "tell me the colour of that {} .", "the {} has which colour ?", "{} : colour ?"]


def test_one_word_decides_the_answer_reaches_100(tmp_path: Path) -> None:
    """Trained on 3 phrasings of each keyword's question, it answers the 4th, never seen, phrasing right."""
    words = list(KEYWORDS.items())
    _write_vqa(tmp_path / "vqa", "train2014", [(f.format(w), a) for f in FRAMES[:3] for w, a in words], 1)
    _write_vqa(tmp_path / "vqa", "val2014", [(FRAMES[3].format(w), a) for w, a in words], 100)
    summary = _train_prior(tmp_path / "vqa", tmp_path / "run")
    assert summary["student"] == "prior" and summary["method"] == "none"
    assert summary["eval"]["eval"]["vqa_accuracy"] == 100.0


def test_no_information_in_the_text_gives_the_majority_rate(tmp_path: Path, monkeypatch) -> None:
    """One question text for every answer: the best it can do is the majority answer, 3 of 5 in val."""
    text = "what colour is it ?"
    _write_vqa(tmp_path / "vqa", "train2014", [(text, a) for a in ["red"] * 6 + ["blue"] * 4], 1)
    _write_vqa(tmp_path / "vqa", "val2014", [(text, a) for a in ["red"] * 3 + ["blue"] * 2], 100)
    summary = _train_prior(tmp_path / "vqa", tmp_path / "run")
    assert summary["eval"]["eval"]["vqa_accuracy"] == 60.0
    # `vldistill eval RUN_DIR` loads the saved prior and gives the same answers
    predictions = tmp_path / "eval"
    monkeypatch.setattr(sys, "argv", ["vldistill", "eval", str(tmp_path / "run"), "--out", str(predictions)])
    main()
    assert json.loads((predictions / "scores.json").read_text())["eval"]["vqa_accuracy"] == 60.0
    answers = {r["answer"] for r in json.loads((predictions / "predictions-eval.json").read_text())}
    assert answers == {"red"}


def test_save_and_load_round_trip(make_inputs, processor, answers, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(kind="prior", hidden_size=16, buckets=256), "vqa", len(answers), answers)
    save_student(model.eval(), tmp_path / "s", processor)
    meta = json.loads((tmp_path / "s" / STUDENT_FILE).read_text())
    assert (meta["kind"], meta["task"], meta["answers"]) == ("prior", "vqa", answers)
    assert "TextPriorStudent.from_pretrained(folder)" in (tmp_path / "s" / "README.md").read_text()
    loaded = load_student(tmp_path / "s", task="vqa", max_text_len=500)  # no position table: any length
    assert isinstance(loaded, TextPriorStudent) and loaded.config.buckets == 256
    inputs = make_inputs("vqa")
    assert torch.equal(loaded.eval()(inputs).logits, model(inputs).logits)
    again = TextPriorStudent.from_pretrained(tmp_path / "s").eval()
    assert torch.equal(again(inputs).logits, model(inputs).logits)
    with pytest.raises(ConfigError, match="is a vqa student"):
        load_student(tmp_path / "s", task="snli_ve")
    # another answer vocabulary: the n-gram embeddings are kept, the head starts anew
    other = build_student(StudentConfig(kind="prior", pretrained=str(tmp_path / "s")), "vqa", 2, ["up", "down"])
    assert torch.equal(other.ngrams.weight, model.ngrams.weight) and other.config.num_labels == 2


def test_any_other_checkpoint_lends_only_its_tokenizer(tiny_student, processor, tmp_path: Path) -> None:
    save_student(tiny_student("fusion", "snli_ve"), tmp_path / "vilt", processor)
    cfg = StudentConfig(kind="prior", pretrained=str(tmp_path / "vilt"), hidden_size=8, buckets=64)
    model = build_student(cfg, "snli_ve", 3)
    assert isinstance(model, TextPriorStudent) and model.ngrams.weight.shape == (64, 8)


def test_a_method_with_the_prior_is_a_config_error() -> None:
    tree = tiny_tree("vqa", "kd", teachers=("clip",), student={"kind": "prior"})
    with pytest.raises(ConfigError) as err:
        parse_config(tree, "t")
    assert str(err.value) == (
        "student.kind prior (the text-only control) is trained with the task loss alone, but method.name is 'kd'; "
        "fix: set method.name: none, or another student.kind"
    )
