"""VisionTeacher: HF vision encoders (tiny ViT, CLIP's vision tower) and the real EfficientNet-Lite0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from transformers import CLIPModel

from vldistill.data.examples import TaskExample
from vldistill.models.teachers import (
    CLIPTeacher,
    TeacherConfig,
    TinyTeacherConfig,
    VisionTeacher,
    build_teacher,
)

LAYOUT = {"vqa": (1, 1), "snli_ve": (1, 1), "vcr": (1, 4), "nlvr2": (2, 1)}
IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def make_batch(task: str, batch_size: int = 2, seed: int = 0):
    n_images, n_texts = LAYOUT[task]
    rng = np.random.default_rng(seed)
    examples = [
        TaskExample(
            f"{b}",
            task,
            tuple(Path(f"{b}-{i}") for i in range(n_images)),
            tuple(f"text {t} of {b}" for t in range(n_texts)),
        )
        for b in range(batch_size)
    ]
    images = [
        [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(n_images)]
        for _ in range(batch_size)
    ]
    return examples, images


def cat_photo() -> tuple[list[TaskExample], list[list[Image.Image]]]:
    """scikit-image's ``chelsea``: a photo of a tabby cat."""
    return [TaskExample("cat", "vqa", (Path("chelsea"),), ("a cat",))], [[Image.fromarray(data.chelsea())]]


@pytest.fixture(scope="module")
def vit() -> VisionTeacher:
    torch.manual_seed(0)
    return build_teacher(TeacherConfig(kind="vision", tiny=TinyTeacherConfig()))


@pytest.fixture(scope="module")
def lite0() -> VisionTeacher:
    return build_teacher(TeacherConfig(kind="vision", pretrained="efficientnet-lite0"))


@pytest.mark.parametrize("task", sorted(LAYOUT))
def test_tiny_vit_shapes_on_each_task(vit: VisionTeacher, task: str) -> None:
    examples, images = make_batch(task)
    out = vit.encode(examples, images)
    n = 2 * LAYOUT[task][0]
    assert out.image_tokens.shape == (n, 16, 32) and out.image_grid == (4, 4)
    assert out.image_embeds.shape == (n, 32)
    assert out.text_tokens is None and out.text_embeds is None and out.candidate_logits is None


def test_vit_tokens_drop_cls_and_pool_is_cls(vit: VisionTeacher) -> None:
    examples, images = make_batch("vqa")
    inputs = vit.processor(examples, images)
    hidden = vit.backbone(pixel_values=inputs.pixel_values).last_hidden_state  # (N, 1 + 16, D)
    out = vit(inputs)
    torch.testing.assert_close(out.image_tokens, hidden[:, 1:])
    torch.testing.assert_close(out.image_embeds, hidden[:, 0])


def test_vit_save_reload_round_trip_and_freezing(vit: VisionTeacher, tmp_path: Path) -> None:
    vit.save_pretrained(tmp_path / "vit")
    again = VisionTeacher.from_pretrained(tmp_path / "vit")
    assert again.fingerprint() == vit.fingerprint()
    examples, images = make_batch("nlvr2")
    expected = vit.encode(examples, images).image_tokens
    torch.testing.assert_close(again.encode(examples, images).image_tokens, expected)
    again.train()
    assert not any(m.training for m in again.modules())
    assert not any(p.requires_grad for p in again.parameters())


def test_fingerprint_differs_when_weights_differ(vit: VisionTeacher) -> None:
    torch.manual_seed(1)
    other = build_teacher(TeacherConfig(kind="vision", tiny=TinyTeacherConfig()))
    assert other.describe() == vit.describe() and other.processor.fingerprint() == vit.processor.fingerprint()
    assert other.fingerprint() != vit.fingerprint()


def test_clip_checkpoint_gives_its_vision_tower(tmp_path: Path) -> None:
    """A full CLIP directory loads as a vision teacher whose patch tokens are the CLIP teacher's."""
    torch.manual_seed(0)
    clip = build_teacher(TeacherConfig(kind="clip", tiny=TinyTeacherConfig()))
    clip.save_pretrained(tmp_path / "clip")
    vision = VisionTeacher.from_pretrained(tmp_path / "clip")
    examples, images = make_batch("vqa")
    a, b = clip.encode(examples, images), vision.encode(examples, images)
    torch.testing.assert_close(b.image_tokens, a.image_tokens)
    assert b.image_grid == a.image_grid
    # The vision teacher's pooled vector is CLIP's pooled [CLS] before the projection.
    assert isinstance(clip, CLIPTeacher) and isinstance(clip.model, CLIPModel)
    projected = torch.nn.functional.normalize(clip.model.visual_projection(b.image_embeds), dim=-1)
    torch.testing.assert_close(projected, a.image_embeds)


def test_efficientnet_lite0_gives_49_tokens_of_1280_at_224(lite0: VisionTeacher) -> None:
    examples, images = cat_photo()
    out = lite0.encode(examples, images)
    assert out.image_tokens.shape == (1, 49, 1280) and out.image_grid == (7, 7)
    torch.testing.assert_close(out.image_embeds, out.image_tokens.mean(dim=1))
    assert lite0.processor.image_size == (224, 224)
    assert lite0.processor.image_mean == pytest.approx((0.485, 0.456, 0.406))


def test_efficientnet_lite0_recognises_a_cat(lite0: VisionTeacher) -> None:
    """Real ImageNet weights: the photo's top-5 classes include a cat (ImageNet 281-285)."""
    examples, images = cat_photo()
    pixels = lite0.processor(examples, images).pixel_values
    top5 = lite0.imagenet_logits(pixels).topk(5).indices[0].tolist()
    assert IMAGENET_CATS & set(top5)
    # The classifier pools the same feature map the teacher exposes as tokens.
    pooled = lite0(lite0.processor(examples, images)).image_embeds
    torch.testing.assert_close(lite0.backbone._fc(pooled), lite0.imagenet_logits(pixels))


def test_efficientnet_lite0_smaller_images_and_round_trip(tmp_path: Path) -> None:
    small = VisionTeacher.from_pretrained("efficientnet-lite0", image_size=64)
    examples, images = make_batch("nlvr2")
    out = small.encode(examples, images)
    assert out.image_tokens.shape == (4, 4, 1280) and out.image_grid == (2, 2)  # 64 px / stride 32
    small.save_pretrained(tmp_path / "lite0")
    again = VisionTeacher.from_pretrained(tmp_path / "lite0")
    assert again.fingerprint() == small.fingerprint()
    torch.testing.assert_close(again.encode(examples, images).image_tokens, out.image_tokens)
    assert not any(p.requires_grad for p in small.parameters())


def test_hf_vit_directory_without_tokenizer(vit: VisionTeacher, tmp_path: Path) -> None:
    """A plain ViT checkpoint (weights and preprocessor_config.json, no tokenizer) loads with its own
    image settings; the unused text slot gets the packaged MiniLM tokenizer."""
    vit.backbone.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(
        '{"size": {"height": 48, "width": 48}, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5]}'
    )
    loaded = VisionTeacher.from_pretrained(tmp_path / "vit")
    assert loaded.processor.image_size == (48, 48)
    assert loaded.processor.image_mean == pytest.approx((0.1, 0.2, 0.3))
    assert loaded.processor.tokenizer.vocab_size == 30522
    examples, images = make_batch("vqa")
    out = loaded.encode(examples, images)  # 48 px on a 32 px ViT: positions interpolated to 6 x 6
    assert out.image_tokens.shape == (2, 36, 32) and out.image_grid == (6, 6)
