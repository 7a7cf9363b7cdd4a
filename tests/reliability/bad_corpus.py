"""A corpus of malformed inputs, generated on the fly.

Each :class:`BadInput` writes a small dataset (or config, results file, ...) in the publisher's exact
layout into a folder, breaks one thing, and returns the ``vldistill`` arguments that must fail; the
test asserts exit status 2 and one stderr line containing every string of ``expect`` (file, record,
problem).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliability.corpus_files import (
    VCR_FRAME,
    VQA_SPLIT,
    edit_json,
    edit_jsonl,
    png_header,
    snli_ve_file,
    truncate,
    vqa_annotations,
    vqa_image,
    vqa_questions,
    write_config,
    write_nlvr2,
    write_snli_ve,
    write_vcr,
    write_vqa,
)
from tiny_configs import tiny_tree

# ----------------------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class BadInput:
    """One malformed input: ``build(folder)`` writes it and returns the CLI arguments that must fail.

    ``lines``: how many ``error:`` lines it gives (``data check`` prints one per defective record).
    """

    name: str
    build: Callable[[Path], list[str]]
    expect: Callable[[Path], tuple[str, ...]]
    lines: int = 1


def _check(task: str, split: str = "train") -> Callable[[Path], list[str]]:
    return lambda root: ["data", "check", task, str(root), "--split", split]


def _data_case(
    name: str,
    task: str,
    write: Callable[[Path], Path],
    breaks: Callable[[Path], None],
    expect: Callable[[Path], tuple[str, ...]],
    split: str = "train",
    lines: int = 1,
) -> BadInput:
    def build(folder: Path) -> list[str]:
        root = write(folder / task)
        breaks(root)
        return _check(task, split)(root)

    return BadInput(name, build, lambda folder: expect(folder / task), lines)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda row: row.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda row: row.pop(key)


def _vqa_question(index: int, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda root: edit_json(vqa_questions(root), lambda top: change(top["questions"][index]))


def _vqa_annotation(index: int, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda root: edit_json(vqa_annotations(root), lambda top: change(top["annotations"][index]))


def _line(path: Callable[[Path], Path], index: int, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda root: edit_jsonl(path(root), index, change)


def _raw_line(path: Callable[[Path], Path], index: int, raw: bytes) -> Callable[[Path], None]:
    """Replace line ``index + 1`` with raw bytes (truncated JSON, non-UTF-8 text)."""

    def change(root: Path) -> None:
        lines = path(root).read_bytes().splitlines(keepends=True)
        lines[index] = raw
        path(root).write_bytes(b"".join(lines))

    return change


def _snli(root: Path) -> Path:
    return snli_ve_file(root)


def _vcr(root: Path) -> Path:
    return root / "train.jsonl"


def _nlvr2(root: Path) -> Path:
    return root / "train.json"


def _nlvr2_image(root: Path, pair: int, side: str) -> Path:
    return root / "images" / "train" / "3" / f"train-5-{pair}-{side}.png"


def _vcr_meta(root: Path) -> Path:
    return root / "vcr1images" / f"{VCR_FRAME}.json"


def _mutate_meta(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda root: edit_json(_vcr_meta(root), change)


DATA_CASES: list[BadInput] = [
    # VQA v2: two JSON files joined by question_id, COCO images
    _data_case(
        "vqa-truncated-questions",
        "vqa",
        write_vqa,
        lambda r: truncate(vqa_questions(r), 0.6),
        lambda r: (vqa_questions(r).name, "invalid JSON", "truncated"),
        VQA_SPLIT,
    ),
    _data_case(
        "vqa-missing-question-text",
        "vqa",
        write_vqa,
        _vqa_question(1, _drop("question")),
        lambda r: (vqa_questions(r).name, "questions[1] (question_id 101)", "missing field 'question'"),
        VQA_SPLIT,
    ),
    _data_case(
        "vqa-mistyped-image-id",
        "vqa",
        write_vqa,
        _vqa_question(2, _set("image_id", "8")),
        lambda r: (vqa_questions(r).name, "question_id 200", "field 'image_id' is a string"),
        VQA_SPLIT,
    ),
    _data_case(
        "vqa-nine-answers",
        "vqa",
        write_vqa,
        _vqa_annotation(0, lambda a: a["answers"].pop()),
        lambda r: (vqa_annotations(r).name, "annotations[0] (question_id 100)", "has 9 answers"),
        VQA_SPLIT,
    ),
    _data_case(
        "vqa-bad-answer-confidence",
        "vqa",
        write_vqa,
        _vqa_annotation(2, lambda a: a["answers"][4].__setitem__("answer_confidence", "sure")),
        lambda r: (vqa_annotations(r).name, "answers[4]", "answer_confidence is 'sure'"),
        VQA_SPLIT,
    ),
    _data_case(
        "vqa-non-utf8",
        "vqa",
        write_vqa,
        lambda r: vqa_questions(r).write_bytes(vqa_questions(r).read_bytes().replace(b"cube", b"cub\xe9")),
        lambda r: (vqa_questions(r).name, "non-UTF-8 byte 0xe9"),
        VQA_SPLIT,
    ),
    _data_case(
        "vqa-missing-image",
        "vqa",
        write_vqa,
        lambda r: vqa_image(r, 8).unlink(),
        lambda r: (vqa_image(r, 8).name, "image of question_id 200", "image not found"),
        VQA_SPLIT,
    ),
    _data_case(
        "vqa-missing-annotations-file",
        "vqa",
        write_vqa,
        lambda r: vqa_annotations(r).unlink(),
        lambda r: (vqa_annotations(r).name, "not found"),
        VQA_SPLIT,
    ),
    # SNLI-VE: JSON Lines over Flickr30K images
    _data_case(
        "snli_ve-truncated-line",
        "snli_ve",
        write_snli_ve,
        _raw_line(_snli, 2, b'{"Flickr30K_ID": "100", "gold_label": "neu\n'),
        lambda r: (_snli(r).name, "line 3", "invalid JSON"),
    ),
    _data_case(
        "snli_ve-bad-label",
        "snli_ve",
        write_snli_ve,
        _line(_snli, 1, _set("gold_label", "entails")),
        lambda r: (_snli(r).name, "line 2 (pairID 101.jpg#train1)", "gold_label is 'entails'"),
    ),
    _data_case(
        "snli_ve-empty-hypothesis",
        "snli_ve",
        write_snli_ve,
        _line(_snli, 3, _set("sentence2", "  ")),
        lambda r: (_snli(r).name, "line 4", "field 'sentence2' is empty"),
    ),
    _data_case(
        "snli_ve-missing-pair-id",
        "snli_ve",
        write_snli_ve,
        _line(_snli, 0, _drop("pairID")),
        lambda r: (_snli(r).name, "line 1", "missing field 'pairID'"),
    ),
    _data_case(
        "snli_ve-non-utf8-line",
        "snli_ve",
        write_snli_ve,
        _raw_line(_snli, 1, b'{"Flickr30K_ID": "101", "sentence2": "caf\xe9"}\n'),
        lambda r: (_snli(r).name, "line 2", "non-UTF-8 byte 0xe9"),
    ),
    _data_case(
        "snli_ve-corrupt-image",
        "snli_ve",
        write_snli_ve,
        lambda r: (r / "flickr30k_images" / "101.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 4),
        lambda r: ("101.jpg", "image of pairID 101.jpg#train1", "cannot be read"),
    ),
    _data_case(
        "snli_ve-bomb-header",
        "snli_ve",
        write_snli_ve,
        lambda r: png_header(r / "flickr30k_images" / "100.jpg", 9000, 9000),
        lambda r: ("100.jpg", "image of pairID 100.jpg#train0", "9000x9000", "decompression bomb"),
    ),
    _data_case(
        "snli_ve-giant-bomb-header",
        "snli_ve",
        write_snli_ve,
        lambda r: png_header(r / "flickr30k_images" / "100.jpg", 100_000, 100_000),
        lambda r: ("100.jpg", "image of pairID 100.jpg#train0", "decompression bomb"),
    ),
    _data_case(
        "snli_ve-unknown-split",
        "snli_ve",
        write_snli_ve,
        lambda r: None,
        lambda r: ("snli_ve_dev.jsonl", "not found", "pick a split present here: train"),
        "dev",
    ),
    _data_case(
        "snli_ve-empty-file",
        "snli_ve",
        write_snli_ve,
        lambda r: _snli(r).write_text("\n\n"),
        lambda r: (str(r), "split 'train' has no records"),
    ),
    # VCR: JSON Lines with object references, per-image metadata JSON
    _data_case(
        "vcr-object-reference-out-of-range",
        "vcr",
        write_vcr,
        _line(_vcr, 1, _set("question", ["Why", "is", [5], "here", "?"])),
        lambda r: (_vcr(r).name, "line 2 (annot_id train-1)", "refers to object 5", "has 3 objects"),
    ),
    _data_case(
        "vcr-answer-label-out-of-range",
        "vcr",
        write_vcr,
        _line(_vcr, 0, _set("answer_label", 4)),
        lambda r: (_vcr(r).name, "line 1 (annot_id train-0)", "answer_label is 4"),
    ),
    _data_case(
        "vcr-three-rationales",
        "vcr",
        write_vcr,
        _line(_vcr, 0, lambda row: row["rationale_choices"].pop()),
        lambda r: (_vcr(r).name, "line 1", "'rationale_choices' has 3 choices"),
    ),
    _data_case(
        "vcr-mistyped-objects",
        "vcr",
        write_vcr,
        _line(_vcr, 1, _set("objects", "person person car")),
        lambda r: (_vcr(r).name, "line 2", "field 'objects' is a string"),
    ),
    _data_case(
        "vcr-truncated-metadata",
        "vcr",
        write_vcr,
        lambda r: truncate(_vcr_meta(r), 0.5),
        lambda r: (_vcr_meta(r).name, "train.jsonl line 1 (annot_id train-0)", "truncated"),
        lines=2,  # both records use the broken metadata file
    ),
    _data_case(
        "vcr-metadata-box-count",
        "vcr",
        write_vcr,
        _mutate_meta(lambda m: m["boxes"].pop()),
        lambda r: (_vcr_meta(r).name, "annot_id train-0", "has 2 boxes and 3 names"),
        lines=2,  # both records use the broken metadata file
    ),
    _data_case(
        "vcr-missing-image",
        "vcr",
        write_vcr,
        lambda r: (r / "vcr1images" / f"{VCR_FRAME}.jpg").unlink(),
        lambda r: (f"{Path(VCR_FRAME).name}.jpg", "image of annot_id train-0", "image not found"),
    ),
    # NLVR2: JSON Lines, image pairs
    _data_case(
        "nlvr2-bad-label",
        "nlvr2",
        write_nlvr2,
        _line(_nlvr2, 2, _set("label", "yes")),
        lambda r: (_nlvr2(r).name, "line 3 (identifier train-5-1-0)", "label is 'yes'"),
    ),
    _data_case(
        "nlvr2-boolean-label",
        "nlvr2",
        write_nlvr2,
        _line(_nlvr2, 0, _set("label", True)),
        lambda r: (_nlvr2(r).name, "line 1", "field 'label' is a boolean"),
    ),
    _data_case(
        "nlvr2-identifier-of-another-split",
        "nlvr2",
        write_nlvr2,
        _line(_nlvr2, 1, _set("identifier", "dev-5-0-1")),
        lambda r: (_nlvr2(r).name, "line 2 (identifier dev-5-0-1)", "this file is split 'train'"),
    ),
    _data_case(
        "nlvr2-mistyped-directory",
        "nlvr2",
        write_nlvr2,
        _line(_nlvr2, 3, _set("directory", "3")),
        lambda r: (_nlvr2(r).name, "line 4", "field 'directory' is a string"),
    ),
    _data_case(
        "nlvr2-missing-right-image",
        "nlvr2",
        write_nlvr2,
        lambda r: _nlvr2_image(r, 1, "img1").unlink(),
        lambda r: ("train-5-1-img1.png", "image of identifier train-5-1-0", "image not found"),
    ),
    _data_case(
        "nlvr2-truncated-png",
        "nlvr2",
        write_nlvr2,
        lambda r: truncate(_nlvr2_image(r, 0, "img0"), 0.5),
        lambda r: ("train-5-0-img0.png", "image of identifier train-5-0-0", "cannot be read"),
    ),
    _data_case(
        "nlvr2-not-an-object",
        "nlvr2",
        write_nlvr2,
        _raw_line(_nlvr2, 0, b'["train-5-0-0", "True"]\n'),
        lambda r: (_nlvr2(r).name, "line 1", "expected a JSON object, got list"),
    ),
]


# --------------------------------------------------------------------------------- configs and results


def _config_case(
    name: str,
    command: str,
    change: Callable[[dict[str, Any], Path], Any],
    expect: Callable[[Path], tuple[str, ...]],
) -> BadInput:
    def build(folder: Path) -> list[str]:
        tree = copy.deepcopy(tiny_tree("snli_ve"))
        tree = change(tree, folder) or tree
        path = write_config(folder / "config.yaml", tree)
        return [
            command,
            str(path),
            *(["--out", str(folder / "run"), "--no-progress"] if command == "train" else []),
        ]

    return BadInput(name, build, expect)


def _raw_config(name: str, raw: bytes, expect: Callable[[Path], tuple[str, ...]]) -> BadInput:
    def build(folder: Path) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_bytes(raw)
        return ["plan", str(folder / "config.yaml")]

    return BadInput(name, build, expect)


def _broken_snli_root(tree: dict[str, Any], folder: Path) -> None:
    root = write_snli_ve(folder / "snli", ("train", "dev"))
    edit_jsonl(snli_ve_file(root, "train"), 2, _set("gold_label", "maybe"))
    tree["data"] = {"task": "snli_ve", "root": str(root)}


CONFIG_CASES: list[BadInput] = [
    _config_case(
        "config-unknown-key",
        "train",
        lambda t, f: t["train"].__setitem__("epochz", 2),
        lambda f: ("config.yaml", "unknown key 'train.epochz'"),
    ),
    _config_case(
        "config-wrong-type",
        "plan",
        lambda t, f: t["train"].__setitem__("batch_size", "eight"),
        lambda f: ("config.yaml", "train.batch_size", "integer"),
    ),
    _config_case(
        "config-out-of-range",
        "plan",
        lambda t, f: t["train"].__setitem__("lr", -1),
        lambda f: ("config.yaml", "train.lr", "greater than 0"),
    ),
    _config_case(
        "config-data-root-missing",
        "train",
        lambda t, f: t["data"].__setitem__("root", str(f / "no-such-dataset")),
        lambda f: ("data.root", str(f / "no-such-dataset"), "is not a folder"),
    ),
    _config_case(
        "config-unknown-task",
        "plan",
        lambda t, f: t["data"].__setitem__("task", "gqa"),
        lambda f: ("config.yaml", "data.task", "'vqa'"),
    ),
    _config_case(
        "config-unknown-teacher-kind",
        "plan",
        lambda t, f: t["method"].__setitem__("teachers", {"v": {"kind": "resnet"}}),
        lambda f: ("config.yaml", "method.teachers.v.kind", "'clip'"),
    ),
    _config_case(
        "config-not-a-mapping",
        "plan",
        lambda t, f: ["data", "train"],
        lambda f: ("config.yaml", "top level must be a mapping"),
    ),
    _config_case(
        "config-dataset-with-bad-record",
        "train",
        _broken_snli_root,
        lambda f: ("snli_ve_train.jsonl", "line 3 (pairID 100.jpg#train2)", "gold_label is 'maybe'"),
    ),
    _raw_config(
        "config-invalid-yaml",
        b"data:\n  task: vqa\n  root: [world\ntrain: {epochs: 1}\n",
        lambda f: ("config.yaml", "line 4", "invalid YAML"),
    ),
    _raw_config("config-non-utf8", b"name: caf\xe9\ndata: {task: vqa}\n", lambda f: ("config.yaml", "not UTF-8")),
    BadInput(
        "config-missing-file",
        lambda f: ["train", str(f / "absent.yaml"), "--out", str(f / "run")],
        lambda f: ("absent.yaml", "no such config file"),
    ),
    BadInput(
        "config-unknown-preset",
        lambda f: ["plan", "--preset", "no-such-preset"],
        lambda f: ("unknown preset 'no-such-preset'", "smoke"),
    ),
    BadInput(
        "config-override-without-equals",
        lambda f: ["plan", "--preset", "smoke", "--set", "train.epochs"],
        lambda f: ("--set train.epochs: no '='",),
    ),
]


def _vqa_score_files(folder: Path, results: Any, raw: bytes | None = None) -> list[str]:
    root = write_vqa(folder / "vqa")
    path = folder / "results.json"
    path.write_bytes(raw if raw is not None else json.dumps(results).encode())
    return [
        "score",
        "vqa",
        "--questions",
        str(vqa_questions(root)),
        "--annotations",
        str(vqa_annotations(root)),
        "--results",
        str(path),
    ]


def _answers(*ids: int) -> list[dict[str, Any]]:
    return [{"question_id": qid, "answer": "red"} for qid in ids]


def _report_dir(folder: Path, lines: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return ["report", str(folder)]


GOOD_ROW = json.dumps(
    {
        "task": "vqa",
        "condition": "full",
        "method": "none",
        "student": "fusion",
        "seed": 0,
        "metric": "vqa_accuracy",
        "value": 41.5,
        "split": "eval",
    }
)

RESULT_CASES: list[BadInput] = [
    BadInput(
        "score-vqa-malformed-results",
        lambda f: _vqa_score_files(f, None, b'[{"question_id": 100, "ans'),
        lambda f: ("results.json", "line 1", "malformed JSON"),
    ),
    BadInput(
        "score-vqa-missing-questions",
        lambda f: _vqa_score_files(f, _answers(100, 200)),
        lambda f: ("results.json", "question_id 101", "no answer for 1 of 3 questions"),
    ),
    BadInput(
        "score-vqa-duplicate-id",
        lambda f: _vqa_score_files(f, _answers(100, 101, 200, 101)),
        lambda f: ("results.json", "results[3] (question_id 101)", "duplicate question_id"),
    ),
    BadInput(
        "score-vqa-unknown-id",
        lambda f: _vqa_score_files(f, _answers(100, 101, 200, 999)),
        lambda f: ("results.json", "results[3] (question_id 999)", "not in the annotated questions"),
    ),
    BadInput(
        "score-vqa-not-a-list",
        lambda f: _vqa_score_files(f, {"100": "red"}),
        lambda f: ("results.json", "must be a JSON list"),
    ),
    BadInput(
        "report-malformed-line",
        lambda f: _report_dir(f, [GOOD_ROW, GOOD_ROW[:-10]]),
        lambda f: ("results.jsonl", "line 2", "malformed JSON"),
    ),
    BadInput(
        "report-missing-value",
        lambda f: _report_dir(f, [GOOD_ROW.replace('"value": 41.5, ', "")]),
        lambda f: ("results.jsonl", "line 1", "missing field 'value'"),
    ),
    BadInput(
        "report-nan-value",
        lambda f: _report_dir(f, [GOOD_ROW.replace("41.5", "NaN")]),
        lambda f: ("results.jsonl", "line 1", "field 'value'"),
    ),
    BadInput(
        "report-empty-results",
        lambda f: _report_dir(f, ["", "  "]),
        lambda f: ("results.jsonl", "no finished runs yet"),
    ),
    BadInput(
        "report-no-results",
        lambda f: ["report", str(f)],
        lambda f: ("results.jsonl", "results file not found"),
    ),
]

ALL_CASES = DATA_CASES + CONFIG_CASES + RESULT_CASES
