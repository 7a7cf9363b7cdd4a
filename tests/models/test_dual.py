from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    ViTConfig,
)

from vldistill.errors import ConfigError
from vldistill.models.dual import DualEncoderStudent, _query_key, tower_from_config
from vldistill.models.heads import task_loss
from vldistill.models.students import StudentConfig, build_student, load_student, save_student

TASKS = ("vqa", "snli_ve", "vcr", "nlvr2")
VIEWS = {"vqa": 1, "snli_ve": 1, "vcr": 4, "nlvr2": 2}
SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture
def build(tiny_student):
    return lambda task: tiny_student("dual", task)


@pytest.mark.parametrize("task", TASKS)
def test_forward_backward_shapes(task: str, build, make_inputs, tiny_targets, num_labels) -> None:
    model = build(task)
    inputs = make_inputs(task)
    out = model(inputs, output_cross_attention=True)
    views, length = 2 * VIEWS[task], inputs.input_ids.shape[1]
    assert out.logits.shape == (2, num_labels[task])
    assert out.text_tokens.shape == (views, length, 32)
    assert out.image_tokens.shape == (views, 16, 32) and out.image_grid == (4, 4)
    assert out.pooled.shape == (views, 32)
    assert out.cross_attention.text_to_image.shape == (views, 2, length, 16)
    assert out.cross_attention.image_to_text.shape == (views, 2, 16, length)
    loss = task_loss(task, out.logits, tiny_targets(task))
    loss.backward()
    for tower in (model.vision_model, model.text_model):
        grads = [p.grad for p in tower.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0


def test_forward_encoded_reuses_one_image_encoding(build, processor, task_batches) -> None:
    model = build("vqa").eval()
    examples, images = task_batches["vqa"]
    shared = [[images[0][0]], [images[0][0]]]  # both questions about the same image
    inputs = processor(examples, shared)
    with torch.no_grad():
        full = model(inputs, output_cross_attention=True)
        image_once = model.encode_images(inputs.pixel_values[:1], with_query_key=True)
        texts = model.encode_texts(inputs.input_ids, inputs.attention_mask, with_query_key=True)
        reused = model.forward_encoded(image_once.select([0, 0]), texts, inputs, output_cross_attention=True)
    assert torch.allclose(full.logits, reused.logits, atol=1e-6)
    assert torch.allclose(full.image_tokens, reused.image_tokens, atol=1e-6)
    ca, cb = full.cross_attention, reused.cross_attention
    assert torch.allclose(ca.text_to_image, cb.text_to_image, atol=1e-6)
    assert torch.allclose(ca.image_to_text, cb.image_to_text, atol=1e-6)


def test_cross_attention_rows_sum_to_one_and_skip_padding(build, make_inputs) -> None:
    out = build("vcr")(make_inputs("vcr"), output_cross_attention=True)
    cross = out.cross_attention
    assert (~cross.text_mask).any(), "the vcr batch must have padded text"
    assert torch.allclose(cross.text_to_image.sum(-1), torch.ones(cross.text_to_image.shape[:-1]), atol=1e-5)
    assert torch.allclose(cross.image_to_text.sum(-1), torch.ones(cross.image_to_text.shape[:-1]), atol=1e-5)
    padded = ~cross.text_mask[:, None, None, :].expand_as(cross.image_to_text)
    assert (cross.image_to_text[padded] == 0).all()


def test_cross_attention_is_text_query_against_image_key(build, make_inputs) -> None:
    model = build("snli_ve").eval()
    inputs = make_inputs("snli_ve")
    with torch.no_grad():
        out = model(inputs, output_cross_attention=True)
        image = model.encode_images(inputs.pixel_values, with_query_key=True)
        text = model.encode_texts(inputs.input_ids, inputs.attention_mask, with_query_key=True)
    q, k = text.query[1, 0, 2], image.key[1, 0]  # example 1, head 0, text token 2
    expected = (k @ q / math.sqrt(16)).softmax(-1)
    assert torch.allclose(out.cross_attention.text_to_image[1, 0, 2], expected, atol=1e-6)


@pytest.mark.parametrize(
    "tower",
    [
        lambda: tower_from_config(ViTConfig(image_size=32, patch_size=8, **SMALL)),
        lambda: tower_from_config(CLIPVisionConfig(image_size=32, patch_size=8, **SMALL)),
        lambda: tower_from_config(BertConfig(vocab_size=100, **{**SMALL, "num_hidden_layers": 2})),
    ],
    ids=["vit", "clip", "bert"],
)
def test_recomputed_query_key_reproduce_the_towers_own_attention(tower) -> None:
    torch.manual_seed(0)
    model = tower().eval()
    if isinstance(model, BertModel):
        mask = torch.tensor([[1, 1, 1, 1, 0]])
        out = model(
            input_ids=torch.tensor([[1, 5, 7, 2, 0]]),
            attention_mask=mask,
            output_hidden_states=True,
            output_attentions=True,
        )
    else:
        mask = torch.ones(1, 17, dtype=torch.long)
        out = model(pixel_values=torch.randn(1, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    query, key = _query_key(model, out.hidden_states[-2])
    scores = (query @ key.transpose(-1, -2) / math.sqrt(16)).masked_fill(mask[:, None, None, :] == 0, -1e9)
    assert torch.allclose(scores.softmax(-1), out.attentions[-1], atol=1e-5)


def test_unequal_heads_is_a_config_error(build, make_inputs, num_labels) -> None:
    vision = tower_from_config(ViTConfig(image_size=32, patch_size=8, **SMALL))
    text = tower_from_config(BertConfig(**{**SMALL, "num_attention_heads": 4}))
    model = DualEncoderStudent.from_towers(vision, text, "snli_ve", 3)
    inputs = make_inputs("snli_ve")
    assert model(inputs).logits.shape == (2, 3)  # fine without cross-attention
    with pytest.raises(ConfigError, match="equal heads and head size"):
        model(inputs, output_cross_attention=True)


@pytest.mark.parametrize("task", ["vqa", "vcr"])
def test_save_and_load_round_trip(task: str, build, make_inputs, answers, tmp_path: Path) -> None:
    model = build(task).eval()
    inputs = make_inputs(task)
    save_student(model, tmp_path / "student")
    assert {p.name for p in (tmp_path / "student").iterdir()} >= {"config.json", "model.safetensors"}
    loaded = load_student(tmp_path / "student").eval()
    assert isinstance(loaded, DualEncoderStudent) and loaded.task == task
    if task == "vqa":
        assert [loaded.config.id2label[i] for i in range(len(answers))] == answers
    with torch.no_grad():
        assert torch.equal(model(inputs).logits, loaded(inputs).logits)


def test_pretrained_towers_keep_their_weights(minilm_path: Path, make_inputs, tmp_path: Path) -> None:
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(vision_config={"image_size": 32, "patch_size": 8, **SMALL}, text_config=SMALL))
    clip.save_pretrained(tmp_path / "clip")  # a full CLIP checkpoint: its vision tower is taken
    cfg = StudentConfig(kind="dual", image_pretrained=str(tmp_path / "clip"), text_pretrained=str(minilm_path))
    model = build_student(cfg, "nlvr2", 2).eval()
    assert isinstance(model.vision_model, CLIPVisionModel)
    clip_q = clip.vision_model.encoder.layers[0].self_attn.q_proj.weight
    assert torch.equal(model.vision_model.encoder.layers[0].self_attn.q_proj.weight, clip_q)
    minilm = BertModel.from_pretrained(minilm_path)
    assert torch.equal(model.text_model.embeddings.word_embeddings.weight, minilm.embeddings.word_embeddings.weight)
    with torch.no_grad():
        out = model(make_inputs("nlvr2"))
    # MiniLM is 384 wide: image features are projected to it
    assert out.image_tokens.shape == (4, 16, 384) and out.logits.shape == (2, 2)


def test_a_clip_text_tower_pools_at_the_end_token() -> None:
    """A CLIP text tower whose end token is id 2 (RoBERTa numbering) is pooled at the end, not at the highest id."""
    text = tower_from_config(CLIPTextConfig(vocab_size=20, max_position_embeddings=12, eos_token_id=2, **SMALL))
    vision = tower_from_config(ViTConfig(image_size=32, patch_size=8, **SMALL))
    student = DualEncoderStudent.from_towers(vision, text, "snli_ve", 3).eval()
    ids = torch.tensor([[0, 19, 5, 7, 2, 1, 1], [0, 4, 2, 1, 1, 1, 1]])  # <s> ... </s> <pad>...
    mask = (torch.arange(7) < torch.tensor([[5], [3]])).long()
    enc = student.encode_texts(ids, mask)
    hidden = student.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(enc.pooled, hidden[[0, 1], [4, 2]])
