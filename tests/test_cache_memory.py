"""``bench/cache_memory.py`` on a 20 MiB cache: the summary's structure and rows read back as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_scripts import bench_script
from safetensors.torch import load_file

from vldistill.training.cache import TeacherCache

MIB = 2**20


@pytest.fixture(scope="module")
def bench():
    with bench_script("cache_memory") as module:
        yield module


def test_stamp_is_the_index_in_base_1024(bench):
    assert bench.SyntheticRows.stamp(torch.tensor([61, 1030, 2**20 + 5])).tolist() == [
        [0.0, 0.0, 61.0],
        [0.0, 1.0, 6.0],
        [1.0, 0.0, 5.0],
    ]


def test_run_summary_and_rows_read_back_as_written(bench, tmp_path):
    summary = bench.run(tmp_path, 20 * MIB, fp16=True, rows_per_shard=8, batch_size=16, interval=0.05)
    per_example = 196 * 768 * 2 + 512 * 4 + 32 * 512 * 2 + 512 * 4  # float16 tokens, float32 embeddings
    n = 20 * MIB // per_example  # 62
    assert summary["cache"]["bytes_per_example"] == per_example == 337920 and n == 62
    # 8 batches, each an image shard, a text shard and an example shard (keys only: no per-example field)
    assert summary["write"]["examples"] == n and summary["write"]["shards"] == 3 * 8
    assert summary["write"]["bytes_on_disk"] > n * per_example
    read = summary["read"]
    assert read["full_pass"] and read["examples_read"] == n and read["batches_read"] == read["verified_rows"] == 4
    assert read["open_files"] >= 16  # one mapping (and descriptor) per shard with tensors: 16 held open
    memory = summary["memory"]
    assert set(memory) >= {"peak_vmrss_mib", "peak_rssanon_mib", "peak_rssfile_mib", "peak_vmhwm_mib"}
    assert 0 < memory["peak_rssanon_mib"] <= memory["peak_vmrss_mib"] <= memory["peak_vmhwm_mib"]
    assert memory["samples"] == len(summary["timeline"]) >= read["batches_read"] + 2
    json.dumps(summary)

    cache = TeacherCache(tmp_path, fp16=True)
    rows = bench.SyntheticRows(torch.float16, 8)
    sampled = [0, 7, 8, 61]  # first row, a shard's last row, the next shard's first row, the last row
    got = cache.lookup([bench.example_of(i, tmp_path / "images") for i in sampled])
    assert got["clip"]["image_tokens"].shape == (4, 1, 196, 768) and got["clip"]["image_tokens"].dtype == torch.float32
    assert got["clip"]["image_tokens"][:, 0, 0, :3].tolist() == [[0, 0, 0], [0, 0, 7], [0, 0, 8], [0, 0, 61]]
    shards = {store: sorted(tmp_path.glob(f"shard-{store}-*.safetensors")) for store in ("img", "txt")}
    for k, i in enumerate(sampled):
        for field, value in rows.expected(i)["clip"].items():
            assert torch.equal(got["clip"][field][k], value)
            written = load_file(str(shards["img" if field.startswith("image") else "txt"][i // 8]))
            assert torch.equal(got["clip"][field][k], written[f"clip/{field}"][i % 8 : i % 8 + 1].float())
    # period 9: the rows of examples 52 and 61 differ only in their stamp
    row_52 = rows.expected(52)["clip"]["text_words"]
    assert torch.equal(got["clip"]["text_words"][3].flatten()[3:], row_52.flatten()[3:])


def test_main_float32_keep_and_delete(bench, tmp_path, capsys):
    out = tmp_path / "summary.json"
    kept = bench.main(
        [
            "--size-gb",
            str(4 * MIB / 2**30),
            "--dir",
            str(tmp_path / "k"),
            "--fp32",
            "--keep",
            "--rows-per-shard",
            "4",
            "--json",
            str(out),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert "timeline" not in printed and printed["read"] == kept["read"] and json.loads(out.read_text())["kept"]
    assert kept["cache"]["dtype"] == "float32" and kept["cache"]["bytes_per_example"] == 2 * 335872
    folder = Path(kept["cache"]["folder"])
    assert folder.parent == tmp_path / "k" and (folder / "meta.json").is_file()
    value = TeacherCache(folder, fp16=False).lookup([bench.example_of(5, folder / "images")])["clip"]["image_embeds"][0]
    assert torch.equal(value, bench.SyntheticRows(torch.float32, 4).expected(5)["clip"]["image_embeds"])
    assert value[0, :3].tolist() == [0, 0, 5]

    bench.main(["--size-gb", str(2 * MIB / 2**30), "--dir", str(tmp_path / "d")])
    assert list((tmp_path / "d").iterdir()) == []


def test_refuses_without_disk_room(bench, tmp_path):
    with pytest.raises(SystemExit, match="not enough disk space in .*pass --dir on a bigger disk"):
        bench.main(["--size-gb", "1000000", "--dir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_sampler_reads_proc_status(bench):
    with bench.MemorySampler(interval=0.01) as sampler:
        sampler.sample()
    assert len(sampler.samples) >= 3
    assert all(0 < s["RssAnon"] and s["RssAnon"] + s["RssFile"] <= s["VmRSS"] <= s["VmHWM"] for s in sampler.samples)
    assert sampler.peaks()["RssAnon"] == max(s["RssAnon"] for s in sampler.samples)
