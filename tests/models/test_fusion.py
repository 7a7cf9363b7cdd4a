from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    ViltForImageAndTextRetrieval,
    ViltForImagesAndTextClassification,
    ViltForQuestionAnswering,
)

from vldistill.errors import ConfigError
from vldistill.models.fusion import FusionStudent, cross_attention_from_joint
from vldistill.models.heads import task_loss
from vldistill.models.students import StudentConfig, build_student, load_student, save_student

TASKS = ("vqa", "snli_ve", "vcr", "nlvr2")
VIEWS = {"vqa": 1, "snli_ve": 1, "vcr": 4, "nlvr2": 2}


@pytest.fixture
def build(tiny_student):
    return lambda task: tiny_student("fusion", task)


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
    assert out.cls_attention.shape == (views, 2, length + 16)
    assert out.cross_attention.text_to_image.shape == (views, 2, length, 16)
    assert out.cross_attention.image_to_text.shape == (views, 2, 16, length)
    assert out.text_mask.dtype == torch.bool and out.image_mask.all()
    loss = task_loss(task, out.logits, tiny_targets(task))
    loss.backward()
    assert torch.isfinite(loss)
    backbone = model.model.vilt.embeddings.patch_embeddings.projection.weight.grad
    assert backbone is not None and backbone.abs().sum() > 0


def test_cross_attention_from_joint_hand_computed() -> None:
    # sequence: text t0 t1(pad) | image [CLS] | patches p0 p1(pad)
    attn = torch.tensor(
        [
            [0.1, 0.1, 0.2, 0.3, 0.3],  # t0
            [0.2, 0.2, 0.2, 0.2, 0.2],  # t1
            [0.2, 0.2, 0.2, 0.2, 0.2],  # image [CLS]
            [0.4, 0.2, 0.1, 0.2, 0.1],  # p0
            [0.3, 0.3, 0.2, 0.1, 0.1],  # p1
        ]
    ).view(1, 1, 5, 5)
    cross = cross_attention_from_joint(attn, torch.tensor([[1, 0]]), torch.tensor([[1, 0]]), n_text=2)
    # t0 over real patches: only p0 (0.3) -> 1; p1 masked -> 0
    assert cross.text_to_image[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert cross.image_to_text[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    two_real = cross_attention_from_joint(attn, torch.tensor([[1, 1]]), torch.tensor([[1, 1]]), n_text=2)
    assert torch.allclose(two_real.text_to_image[0, 0, 0], torch.tensor([0.5, 0.5]))
    assert torch.allclose(two_real.image_to_text[0, 0, 0], torch.tensor([2 / 3, 1 / 3]))


def test_cross_attention_normalised_over_real_keys(build, make_inputs) -> None:
    out = build("vcr")(make_inputs("vcr"), output_cross_attention=True)
    cross = out.cross_attention
    assert (~cross.text_mask).any(), "the vcr batch must have padded text"
    assert torch.allclose(cross.text_to_image.sum(-1), torch.ones(cross.text_to_image.shape[:-1]), atol=1e-5)
    assert torch.allclose(cross.image_to_text.sum(-1), torch.ones(cross.image_to_text.shape[:-1]), atol=1e-5)
    padded = ~cross.text_mask[:, None, None, :].expand_as(cross.image_to_text)
    assert (cross.image_to_text[padded] == 0).all()


def test_image_tokens_are_row_major_patches(build, make_inputs) -> None:
    model = build("vqa")
    pixels = make_inputs("vqa").pixel_values
    embeds, grid = model.image_embeddings(pixels)
    emb = model.model.vilt.embeddings
    row, col = 2, 3  # patch at pixels [16:24, 24:32]
    patch = emb.patch_embeddings.projection(pixels[:, :, 16:24, 24:32]).flatten(1)
    position = emb.position_embeddings[0, 1 + row * grid[1] + col]
    assert torch.allclose(embeds[:, 1 + row * grid[1] + col], patch + position, atol=1e-6)


def test_vqa_directory_loads_in_plain_transformers(build, make_inputs, answers, tmp_path: Path) -> None:
    model = build("vqa").eval()
    inputs = make_inputs("vqa")
    model.save_pretrained(tmp_path)
    hf = ViltForQuestionAnswering.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ours = model(inputs).logits
        theirs = hf(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values
        ).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert [hf.config.id2label[i] for i in range(len(answers))] == answers


def test_nlvr2_matches_transformers_two_image_classifier(build, make_inputs, tmp_path: Path) -> None:
    model = build("nlvr2").eval()
    inputs = make_inputs("nlvr2")
    model.save_pretrained(tmp_path)
    hf = ViltForImagesAndTextClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ours = model(inputs).logits
        theirs = hf(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            pixel_values=inputs.pixel_values.view(2, 2, 3, 32, 32),
        ).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_vcr_scores_each_candidate_with_its_image(build, make_inputs, tmp_path: Path) -> None:
    model = build("vcr").eval()
    inputs = make_inputs("vcr")
    model.save_pretrained(tmp_path)
    hf = ViltForImageAndTextRetrieval.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ours = model(inputs).logits
        theirs = hf(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            pixel_values=inputs.pixel_values.repeat_interleave(4, dim=0),
        ).logits.view(2, 4)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("task", ["vqa", "nlvr2"])
def test_save_and_load_round_trip(task: str, build, make_inputs, tmp_path: Path) -> None:
    model = build(task).eval()
    inputs = make_inputs(task)
    save_student(model, tmp_path / "student")
    loaded = load_student(tmp_path / "student").eval()
    assert isinstance(loaded, FusionStudent) and loaded.task == task
    with torch.no_grad():
        assert torch.equal(model(inputs).logits, loaded(inputs).logits)


def test_nlvr2_from_single_image_checkpoint_adds_second_image_type(build, tmp_path: Path) -> None:
    build("vqa").save_pretrained(tmp_path)  # a ViLT checkpoint with 2 modality types, like vilt-b32-mlm
    model = build_student(StudentConfig(kind="fusion", pretrained=str(tmp_path)), "nlvr2", 2)
    types = model.model.vilt.embeddings.token_type_embeddings.weight
    saved = ViltForQuestionAnswering.from_pretrained(tmp_path).vilt.embeddings.token_type_embeddings.weight
    assert types.shape[0] == 3 and model.config.modality_type_vocab_size == 3
    assert torch.equal(types[:2], saved) and torch.equal(types[2], saved[1])


def test_image_size_must_divide_by_patch(build, make_inputs) -> None:
    inputs = make_inputs("vqa")
    inputs.pixel_values = inputs.pixel_values[:, :, :30, :30]
    with pytest.raises(ConfigError, match="patch size 8"):
        build("vqa")(inputs)
