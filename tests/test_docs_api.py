"""docs/api.md: its Python examples run as written, in order, in an empty folder, and say what they claim."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_api_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 5  # read a dataset, a config, build a method, train, evaluate
    session: dict = {"__name__": "docs_api"}
    for n, block in enumerate(blocks, 1):
        exec(compile(block, f"{DOC}, python block {n}", "exec"), session)
    printed = capsys.readouterr().out
    assert len(session["records"]) == 150 and "val2014" in session["first"].image_path.name  # the world's val2014
    assert session["method"].describe()["selection"] == "teacher_relevance"  # CLIP-TD's own default
    assert session["built"].method.name == "clip_td" and len(session["data"].train) == 48
    summary, scores = session["summary"], session["scores"]
    assert (tmp_path / "runs" / "api-example" / "final" / "README.md").is_file()
    for split in ("eval", "eval:shuffled"):  # the saved student, evaluated again, scores what the run reported
        assert scores[split]["vqa_accuracy"] == summary["eval"][split]["vqa_accuracy"]
    assert f"{scores['eval']['vqa_accuracy']} {scores['eval:shuffled']['vqa_accuracy']}" in printed
