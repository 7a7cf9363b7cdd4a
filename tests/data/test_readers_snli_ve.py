"""SNLI-VE reader: golden round trip on the official layout, and defects named by line."""

from __future__ import annotations

from pathlib import Path

from vldistill.data.readers import read_snli_ve, read_task_report
from vldistill.data.records import SNLIVERecord

FILE = "snli_ve_train.jsonl"


def test_golden_round_trip(snli_ve_root: Path) -> None:
    records = read_snli_ve(snli_ve_root, "train")
    assert records[0] == SNLIVERecord(
        pair_id="3416050480.jpg#4r1e",
        flickr30k_id="3416050480",
        image_path=snli_ve_root.absolute() / "flickr30k_images" / "3416050480.jpg",
        hypothesis="The man is playing music.",
        gold_label="entailment",
        premise_caption="A man in a black shirt plays a guitar.",
        caption_id="3416050480.jpg#4",
    )
    assert [r.gold_label for r in records] == ["entailment", "contradiction", "neutral"]
    assert records[2].image_path.name == "1000092795.jpg"


def test_integer_flickr_id_and_blank_lines(snli_ve_root: Path, edit_jsonl) -> None:
    edit_jsonl(snli_ve_root / FILE, 2, lambda row: row.update(Flickr30K_ID=1000092795))
    path = snli_ve_root / FILE
    path.write_text("\n" + path.read_text() + "\n\n")
    records = read_snli_ve(snli_ve_root, "train")
    assert len(records) == 3 and records[2].flickr30k_id == "1000092795"


def test_bad_label(snli_ve_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(snli_ve_root / FILE, 1, lambda row: row.update(gold_label="-"))
    data_error(
        lambda: read_snli_ve(snli_ve_root, "train"),
        file=FILE,
        record="line 2 (pairID 3416050480.jpg#4r1c)",
        problem="gold_label is '-'",
    )


def test_missing_hypothesis(snli_ve_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(snli_ve_root / FILE, 2, lambda row: row.pop("sentence2"))
    data_error(
        lambda: read_snli_ve(snli_ve_root, "train"),
        file=FILE,
        record="line 3",
        problem="missing field 'sentence2'",
    )


def test_image_path_escaping_root(snli_ve_root: Path, edit_jsonl, data_error) -> None:
    edit_jsonl(snli_ve_root / FILE, 0, lambda row: row.update(Flickr30K_ID="../../secret"))
    data_error(lambda: read_snli_ve(snli_ve_root, "train"), file=FILE, record="line 1", problem="points outside")


def test_malformed_line_names_line_and_column(snli_ve_root: Path, data_error) -> None:
    path = snli_ve_root / FILE
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:50] + "\n"  # a line cut short, as by an interrupted download
    path.write_text("".join(lines))
    data_error(
        lambda: read_snli_ve(snli_ve_root, "train"),
        file=FILE,
        record="line 2",
        problem="invalid JSON at column",
    )
    records, skipped = read_task_report("snli_ve", snli_ve_root, "train")
    assert [r.pair_id for r in records] == ["3416050480.jpg#4r1e", "1000092795.jpg#0r1n"]
    assert len(skipped) == 1 and f"{FILE}: line 2: invalid JSON" in skipped.lines()[0]


def test_non_utf8_line(snli_ve_root: Path, data_error) -> None:
    path = snli_ve_root / FILE
    path.write_bytes(path.read_bytes().replace(b"Two young", b"Two \xff young"))
    data_error(lambda: read_snli_ve(snli_ve_root, "train"), file=FILE, record="line 3", problem="non-UTF-8 byte 0xff")


def test_missing_split_file(snli_ve_root: Path, data_error) -> None:
    data_error(lambda: read_snli_ve(snli_ve_root, "dev"), file="snli_ve_dev.jsonl", record=None, problem="not found")
