"""TextTeacher: the real packaged MiniLM offline, a tiny BERT, mean pooling, freezing, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vldistill.data.examples import TaskExample
from vldistill.models.teachers import TeacherConfig, TextTeacher, TinyTeacherConfig, build_teacher, mean_pool

LAYOUT = {"vqa": (1, 1), "snli_ve": (1, 1), "vcr": (1, 4), "nlvr2": (2, 1)}


def batch_of(task: str, texts: list[str]) -> tuple[list[TaskExample], list[list[Image.Image]]]:
    """One example per text (vcr: the texts are one example's four candidates)."""
    n_images, n_texts = LAYOUT[task]
    groups = [tuple(texts[i : i + n_texts]) for i in range(0, len(texts), n_texts)]
    examples = [
        TaskExample(f"{b}", task, tuple(Path(f"{b}-{i}") for i in range(n_images)), g) for b, g in enumerate(groups)
    ]
    return examples, [[Image.new("RGB", (20, 20), "red")] * n_images for _ in groups]


@pytest.fixture(scope="module")
def minilm() -> TextTeacher:
    return build_teacher(TeacherConfig(kind="text", pretrained="minilm"))


@pytest.fixture(scope="module")
def tiny() -> TextTeacher:
    torch.manual_seed(0)
    return build_teacher(TeacherConfig(kind="text", tiny=TinyTeacherConfig()))


def test_mean_pool_by_hand() -> None:
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(mean_pool(tokens, mask), torch.tensor([[2.0, 3.0]]))


def test_minilm_embeddings_are_semantic(minilm: TextTeacher) -> None:
    """Real weights: a paraphrase is far closer than an unrelated sentence."""
    examples, images = batch_of("snli_ve", ["a red circle", "a red round shape", "the stock market fell"])
    emb = F.normalize(minilm.encode(examples, images).text_embeds, dim=-1)
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert paraphrase > unrelated + 0.4
    assert paraphrase > 0.6


def test_minilm_tokens_words_and_pooling(minilm: TextTeacher) -> None:
    examples, images = batch_of("vqa", ["a red circle", "is the big square left?"])
    out = minilm.encode(examples, images)
    # [CLS] a red circle [SEP] [PAD] [PAD] [PAD] / [CLS] is the big square left ? [SEP]: "left?" is word 4
    assert out.text_tokens.shape == (2, 8, 384)
    assert out.text_word_index.tolist() == [[-1, 0, 1, 2, -1, -1, -1, -1], [-1, 0, 1, 2, 3, 4, 4, -1]]
    assert out.text_mask.sum(dim=1).tolist() == [5, 8]
    torch.testing.assert_close(out.text_embeds[0], out.text_tokens[0, :5].mean(dim=0))
    assert out.image_tokens is None and out.image_embeds is None
    assert minilm.processor.image_size == (16, 16)  # pixels are unused: kept tiny


@pytest.mark.parametrize("task", sorted(LAYOUT))
def test_tiny_shapes_on_each_task(tiny: TextTeacher, task: str) -> None:
    n_texts = LAYOUT[task][1]
    examples, images = batch_of(task, [f"text number {i} here" for i in range(2 * n_texts)])
    out = tiny.encode(examples, images)
    assert out.text_tokens.shape == (2 * n_texts, 6, 32)  # [CLS] text number i here [SEP]
    assert out.text_embeds.shape == (2 * n_texts, 32)
    assert out.text_word_index.shape == out.text_mask.shape == (2 * n_texts, 6)


def test_tiny_round_trip_freezing_and_fingerprints(tiny: TextTeacher, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path / "bert")
    again = TextTeacher.from_pretrained(tmp_path / "bert")
    assert again.fingerprint() == tiny.fingerprint()
    examples, images = batch_of("vqa", ["a red circle"])
    expected = tiny.encode(examples, images).text_embeds
    torch.testing.assert_close(again.encode(examples, images).text_embeds, expected)
    again.train()
    assert not any(m.training for m in again.modules())
    assert not any(p.requires_grad for p in again.parameters())
    torch.manual_seed(1)
    other = build_teacher(TeacherConfig(kind="text", tiny=TinyTeacherConfig()))
    assert other.fingerprint() != tiny.fingerprint()
