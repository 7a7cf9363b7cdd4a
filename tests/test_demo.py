"""``vldistill demo --quick``: the embedded default end to end (world, teachers, protocol, DiDE, report)."""

from __future__ import annotations

import json
import re

import pytest
from cli.test_main import in_process

from vldistill.demo.run import publish_report, run_demo
from vldistill.protocol.runner import read_results


def test_quick_demo_runs_end_to_end_and_continues(tmp_path, capsys):
    out = tmp_path / "demo"
    report = run_demo(out, quick=True)
    text = report.read_text()
    for heading in ("vqa", "snli_ve", "## What did not appear", "## What did appear", "### vqa: controls"):
        assert heading in text
    rows = read_results(out / "results.jsonl")
    runs = {(r["task"], r["condition"], r["label"]) for r in rows if r["split"] == "eval"}
    # 2 tasks x (2 conditions x (the text-only prior + 4 fusion methods) + the plain and the DiDE dual encoder)
    assert len(runs) == 2 * (2 * 5 + 2)
    assert {r["condition"] for r in rows} == {"full", "lowshot-0.5", "shift"}
    assert {(r["student"], r["method"]) for r in rows} == {
        ("prior", "prior"),
        ("fusion", "none"),
        ("fusion", "kd"),
        ("fusion", "clip_td"),
        ("fusion", "mad"),
        ("dual", "none"),
        ("dual", "dide"),
    }
    assert all(0 <= r["value"] <= 100 for r in rows)
    # every fusion and dual run was selected on dev and controlled with shuffled images
    assert all(r["dev"] is not None for r in rows)
    shuffled = {(r["task"], r["condition"], r["label"]) for r in rows if r["control"] == "shuffled"}
    assert {(t, c, label) for t, c, label in runs if label != "prior"} <= shuffled
    assert "uses the image" in text and "text-only prior" in text
    assert (out / "summary.csv").is_file() and list(out.glob("*.png"))
    demo = json.loads((out / "demo.json").read_text())
    assert demo["quick"] and demo["demo_clip"]["stats"]["pairs"] > 0 and demo["seeds"] == [0]
    grounding = demo["demo_clip"]["stats"]["grounding"]
    assert set(grounding) == {"base", "shifted"} and grounding["base"]["chance"] == 0.25
    assert "## The demo's CLIP teacher" in text and "shape word grounded" in text
    assert json.loads((out / "protocol.json").read_text())["jobs"] == 2  # as run, not the file's default
    assert "## The demo's pre-trained student" in text and demo["demo_student"]["stats"]["styles"] == ["base"]
    printed = capsys.readouterr().out
    assert "vqa (vqa_accuracy)" in printed and "snli_ve (accuracy)" in printed
    # published beside the docs: the plots copied, every image link resolving from the document's folder
    doc = publish_report(out, tmp_path / "docs" / "demo-report.md", seconds=61.0, command="vldistill demo --quick")
    published = doc.read_text()
    assert published.startswith("# The demo's report\n\nWritten by `vldistill demo --quick` on ")
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", published)
    assert links and all(link.startswith("demo-report/") and (doc.parent / link).is_file() for link in links)
    assert "61 s wall clock" in published and "## What did not appear" in published
    # a second invocation finds every run done: nothing is trained again
    before = (out / "results.jsonl").read_text()
    run_demo(out, quick=True)
    assert (out / "results.jsonl").read_text() == before


@pytest.mark.parametrize("bad", ["x", ",", "1,1", "-1", "4294967296"])
def test_demo_seeds_are_checked_and_another_world_gets_its_own_folder(bad, tmp_path, monkeypatch, capsys):
    from vldistill.training.experiment import world_dir

    monkeypatch.setenv("VLDISTILL_CACHE", str(tmp_path))
    assert (world_dir(1.0).name, world_dir(0.05, 3).name) == ("scale-1", "scale-0.05-seed3")
    code, out, err = in_process(["demo", "--seeds", bad, "--out", str(tmp_path / "d")], monkeypatch, capsys)
    assert code == 2 and err.startswith(f"error: --seeds {bad!r}") and "fix: e.g. --seeds 3,4,5" in err
    assert not (tmp_path / "d").exists()


def test_a_demo_student_placeholder_without_its_section_is_refused_before_any_work(tmp_path, monkeypatch):
    import yaml

    from vldistill.config import PRESETS_DIR
    from vldistill.errors import ConfigError

    monkeypatch.setenv("VLDISTILL_CACHE", str(tmp_path / "cache"))
    raw = yaml.safe_load((PRESETS_DIR / "demo-quick.yaml").read_text())
    del raw["demo_student"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="'@demo-student' is used but there is no demo_student section"):
        run_demo(tmp_path / "demo", spec_path=spec)
    assert not (tmp_path / "cache").exists()  # refused before the world is generated
