"""Write a split of the generated world (official layout) again in the two other layouts vldistill reads
(and run the command line in-process on them: :func:`run_cli`).

- ``write_vilt_arrow``: ViLT's / DiDE's Arrow IPC files, the columns their ``write_vqa.py``,
  ``write_snli_ve.py`` and ``write_nlvr2.py`` produce (one row per image, lists of texts and labels, the
  encoded image as read from disk). Written from the official JSON files, as those scripts are, not from
  vldistill's records. One deliberate difference for VQA v2: answers are normalised
  (:func:`vldistill.metrics.vqa.normalize_answer`) before they are counted and every answer is in the
  vocabulary, so that the official soft scores of the same questions can be compared exactly (ViLT counts
  raw strings and keeps a vocabulary of answers seen 9 times).
- ``write_hf``: a Hugging Face ``datasets`` split, ``save_to_disk`` folder or Parquet file, one row per
  record with an ``Image()`` column, in ``HuggingFaceM4/VQAv2``'s column names for VQA v2.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from vldistill.data.readers import nlvr2, snli_ve, vqa
from vldistill.metrics.vqa import normalize_answer


def run_cli(monkeypatch, *args: str) -> int:
    """``vldistill ARGS`` in this process (``monkeypatch`` sets ``sys.argv``): its exit status, 0 when it returns."""
    from vldistill.cli import main

    monkeypatch.setattr(sys, "argv", ["vldistill", *args])
    try:
        main()
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


VILT_SPLITS = {"val2014": "val", "train2014": "train"}


def vilt_score(count: int) -> float:
    """ViLT write_vqa.py's get_score: 0.3, 0.6, 0.9 for 1, 2, 3 annotators, 1.0 for more."""
    return {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(count, 1.0)


def _write_ipc(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _vqa_rows(root: Path, split: str) -> dict[int, list[tuple[dict, dict | None]]]:
    """Questions with their annotations, grouped by image_id, in file order."""
    questions = json.loads(vqa.questions_path(root, split).read_text())["questions"]
    annotations_file = vqa.annotations_path(root, split)
    annotations = (
        {a["question_id"]: a for a in json.loads(annotations_file.read_text())["annotations"]}
        if annotations_file.is_file()
        else {}
    )
    by_image: dict[int, list[tuple[dict, dict | None]]] = {}
    for q in questions:
        by_image.setdefault(q["image_id"], []).append((q, annotations.get(q["question_id"])))
    return by_image


def write_vilt_vqa(root: Path, split: str, out: Path) -> Path:
    """``out/vqav2_<val|train>.arrow`` from the official VQA v2 split under ``root``."""
    images = root / vqa.image_folder(split)
    rows: dict[str, list[Any]] = {c: [] for c in ("image", "questions", "answers", "answer_labels", "answer_scores")}
    rows |= {"image_id": [], "question_id": [], "split": []}
    vocabulary: dict[str, int] = {}
    for image_id, pairs in _vqa_rows(root, split).items():
        rows["image"].append(vqa.image_path(images, image_id).read_bytes())
        rows["image_id"].append(image_id)
        rows["questions"].append([q["question"] for q, _ in pairs])
        rows["question_id"].append([q["question_id"] for q, _ in pairs])
        answers, scores = [], []
        for _, a in pairs:
            counts = Counter(normalize_answer(x["answer"]) for x in a["answers"])
            counts.pop("", None)
            answers.append(list(counts))
            scores.append([vilt_score(n) for n in counts.values()])
        rows["answers"].append(answers)
        rows["answer_scores"].append(scores)
        rows["answer_labels"].append([[vocabulary.setdefault(w, len(vocabulary)) for w in ws] for ws in answers])
        rows["split"].append(VILT_SPLITS[split])
    return _write_ipc(out / f"vqav2_{VILT_SPLITS[split]}.arrow", pa.table(rows))


def write_vilt_snli_ve(root: Path, split: str, out: Path) -> Path:
    """``out/snli_ve_<split>.arrow`` (DiDE's columns) from the official SNLI-VE split under ``root``."""
    by_image: dict[str, list[dict]] = {}
    for line in _jsonl(snli_ve.annotations_path(root, split)):
        by_image.setdefault(str(line["Flickr30K_ID"]), []).append(line)
    table = pa.table(
        {
            "image": [(root / "flickr30k_images" / f"{i}.jpg").read_bytes() for i in by_image],
            "questions": [[r["sentence2"] for r in rs] for rs in by_image.values()],
            "answers": [[r["gold_label"] for r in rs] for rs in by_image.values()],
            "identifier": list(by_image),
        }
    )
    return _write_ipc(out / f"snli_ve_{split}.arrow", table)


def write_vilt_nlvr2(root: Path, split: str, out: Path) -> Path:
    """``out/nlvr2_<split>.arrow`` (ViLT's columns) from the official NLVR2 split under ``root``."""
    by_pair: dict[str, list[dict]] = {}
    for line in _jsonl(nlvr2.annotations_path(root, split)):
        by_pair.setdefault(line["identifier"].rsplit("-", 1)[0], []).append(line)
    folder = nlvr2.images_folder(root, split)

    def image(stem: str, rows: list[dict], side: int) -> bytes:
        sub = folder / str(rows[0]["directory"]) if "directory" in rows[0] else folder
        return (sub / f"{stem}-img{side}.png").read_bytes()

    table = pa.table(
        {
            "image_0": [image(stem, rs, 0) for stem, rs in by_pair.items()],
            "image_1": [image(stem, rs, 1) for stem, rs in by_pair.items()],
            "questions": [[r["sentence"] for r in rs] for rs in by_pair.values()],
            "answers": [[r["label"] for r in rs] for rs in by_pair.values()],
            "identifier": list(by_pair),
        }
    )
    return _write_ipc(out / f"nlvr2_{split}.arrow", table)


def hf_rows(task: str, root: Path, split: str) -> tuple[dict[str, list[Any]], Any]:
    """Columns and ``datasets.Features`` of one official split, one row per record."""
    import datasets

    image = datasets.Image()
    if task == "vqa":
        images = root / vqa.image_folder(split)
        rows = [(q, a) for pairs in _vqa_rows(root, split).values() for q, a in pairs]
        columns = {
            "question_type": [a["question_type"] for _, a in rows],
            "multiple_choice_answer": [a["multiple_choice_answer"] for _, a in rows],
            "answers": [a["answers"] for _, a in rows],
            "image_id": [q["image_id"] for q, _ in rows],
            "answer_type": [a["answer_type"] for _, a in rows],
            "question_id": [q["question_id"] for q, _ in rows],
            "question": [q["question"] for q, _ in rows],
            "image": [{"bytes": vqa.image_path(images, q["image_id"]).read_bytes(), "path": None} for q, _ in rows],
        }
        answer = {"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string")}
        features = {
            "question_type": datasets.Value("string"),
            "multiple_choice_answer": datasets.Value("string"),
            "answers": [answer | {"answer_id": datasets.Value("int64")}],
            "image_id": datasets.Value("int64"),
            "answer_type": datasets.Value("string"),
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image": image,
        }
    elif task == "snli_ve":
        lines = _jsonl(snli_ve.annotations_path(root, split))
        columns = {
            "pairID": [r["pairID"] for r in lines],
            "Flickr30K_ID": [r["Flickr30K_ID"] for r in lines],
            "hypothesis_text": [r["sentence2"] for r in lines],  # mapped: data.columns.hypothesis
            "gold_label": [["entailment", "neutral", "contradiction"].index(r["gold_label"]) for r in lines],
            "sentence1": [r["sentence1"] for r in lines],
            "captionID": [r["captionID"] for r in lines],
            "image": [
                {"bytes": (root / "flickr30k_images" / f"{r['Flickr30K_ID']}.jpg").read_bytes(), "path": None}
                for r in lines
            ],
        }
        features = {name: datasets.Value("string") for name in columns} | {
            "gold_label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "image": image,
        }
    else:
        lines = _jsonl(nlvr2.annotations_path(root, split))
        folder = nlvr2.images_folder(root, split)

        def side(r: dict, k: int) -> dict:
            sub = folder / str(r["directory"]) if "directory" in r else folder
            return {"bytes": (sub / f"{r['identifier'].rsplit('-', 1)[0]}-img{k}.png").read_bytes(), "path": None}

        columns = {
            "identifier": [r["identifier"] for r in lines],
            "sentence": [r["sentence"] for r in lines],
            "label": [r["label"] == "True" for r in lines],
            "left_image": [side(r, 0) for r in lines],
            "right_image": [side(r, 1) for r in lines],
        }
        features = {
            "identifier": datasets.Value("string"),
            "sentence": datasets.Value("string"),
            "label": datasets.Value("bool"),
            "left_image": image,
            "right_image": image,
        }
    return columns, datasets.Features(features)


def write_hf(task: str, root: Path, split: str, out: Path, *, parquet: bool = False, name: str | None = None) -> Path:
    """``out/<name>/`` (``save_to_disk``) or ``out/data/<name>-00000-of-00001.parquet`` (``name``: ``split``)."""
    import datasets

    columns, features = hf_rows(task, root, split)
    dataset = datasets.Dataset.from_dict(columns, features=features)
    name = name or split
    if parquet:
        path = out / "data" / f"{name}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(path))
        return path
    dataset.save_to_disk(str(out / name))
    return out / name
