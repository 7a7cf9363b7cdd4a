"""Two runs that build one teacher cache at once (a protocol's ``--jobs``) take turns on its lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from vldistill.data.examples import TaskExample
from vldistill.training.cache import ensure_cache


class CountingTeacher:
    """A method whose one teacher returns each example's index; counts the rows it computed and the overlap."""

    def __init__(self) -> None:
        self.rows = 0
        self.active = 0
        self.most_active = 0
        self.guard = threading.Lock()

    def targets_for(self, chunk: list[TaskExample], images: list) -> dict[str, dict[str, torch.Tensor]]:
        with self.guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.05)  # long enough for an unguarded second build to overlap this one
        with self.guard:
            self.active -= 1
            self.rows += len(chunk)
        return {"t": {"index": torch.tensor([[float(ex.uid)] for ex in chunk])}}


def test_concurrent_builds_of_one_cache_compute_each_row_once(tmp_path: Path) -> None:
    for i in range(12):  # rows are keyed by the image files' bytes: the files must exist
        (tmp_path / f"{i}.png").write_bytes(f"image {i}".encode())
    examples = [TaskExample(str(i), "vqa", (tmp_path / f"{i}.png",), ("q",)) for i in range(12)]
    teacher = CountingTeacher()
    caches = []

    def build() -> None:
        caches.append(
            ensure_cache(
                tmp_path / "cache",
                teacher,
                examples,
                fp16=False,
                key_parts={"k": 1},
                batch_size=4,
                store=lambda path: None,
            )
        )

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert teacher.rows == 12 and teacher.most_active == 1  # the second build found every row there
    for cache in caches:
        got = cache.lookup([examples[0], examples[11]])["t"]["index"]
        assert got.tolist() == [[0.0], [11.0]]
