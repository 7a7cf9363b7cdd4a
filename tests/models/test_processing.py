from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPProcessor,
    ViltImageProcessorPil,
    ViltProcessor,
)

from vldistill.data.examples import TaskExample
from vldistill.errors import ConfigError
from vldistill.models.processing import Processor, word_index_from_offsets


def test_word_index_hand_checked(processor: Processor) -> None:
    # [CLS] hello worlds una ##ffa ##ble x [SEP] / [CLS] where is the dog ? [SEP] [PAD]
    ids, mask, words = processor.tokenize(["Hello  worlds unaffable x", "Where is the dog?"])
    tokens = processor.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert tokens == ["[CLS]", "hello", "worlds", "una", "##ffa", "##ble", "x", "[SEP]"]
    assert words.tolist() == [[-1, 0, 1, 2, 2, 2, 3, -1], [-1, 0, 1, 2, 3, 3, -1, -1]]
    assert mask.tolist() == [[1] * 8, [1] * 7 + [0]]


def test_word_index_from_offsets_with_leading_space_tokens() -> None:
    # BPE tokenizers (RoBERTa, CLIP) may give a token the span of its leading space.
    assert word_index_from_offsets("a big dog", [(0, 0), (0, 1), (1, 5), (5, 9), (0, 0)]) == [-1, 0, 1, 2, -1]


def test_lowercase_keeps_word_alignment(processor: Processor) -> None:
    lower = Processor(processor.tokenizer, 32, (0.5,) * 3, (0.5,) * 3, lowercase=True)
    ids, _, words = lower.tokenize(["BIG Dog"])
    assert processor.tokenizer.convert_ids_to_tokens(ids[0].tolist()) == ["[CLS]", "big", "dog", "[SEP]"]
    assert words.tolist() == [[-1, 0, 1, -1]]


def test_truncation_to_max_length(processor: Processor) -> None:
    short = Processor(processor.tokenizer, 32, (0.5,) * 3, (0.5,) * 3, max_length=6)
    ids, _, words = short.tokenize(["one two three four five six seven eight"])
    assert ids.shape == (1, 6)
    assert processor.tokenizer.convert_ids_to_tokens(ids[0].tolist())[-1] == "[SEP]"
    assert words.tolist() == [[-1, 0, 1, 2, 3, -1]]


def test_pixels_resized_and_normalised(processor: Processor) -> None:
    wide = Processor(processor.tokenizer, (32, 48), (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    pixels = wide.images_to_tensor([Image.new("RGB", (17, 9), (255, 0, 51))])
    assert pixels.shape == (1, 3, 32, 48)
    # (255/255 - 0.5)/0.5 = 1; (0 - 0.5)/0.25 = -2; (51/255 - 0.5)/0.5 = -0.6
    assert torch.allclose(pixels[0, :, 5, 7], torch.tensor([1.0, -2.0, -0.6]), atol=1e-6)


def test_batch_layout_of_each_task(make_inputs) -> None:
    vcr = make_inputs("vcr")
    assert (vcr.n_images, vcr.n_texts, vcr.task, vcr.batch_size) == (1, 4, "vcr", 2)
    assert vcr.pixel_values.shape == (2, 3, 32, 32)
    assert vcr.input_ids.shape[0] == vcr.attention_mask.shape[0] == vcr.word_index.shape[0] == 8
    nlvr2 = make_inputs("nlvr2")
    assert (nlvr2.n_images, nlvr2.n_texts, nlvr2.batch_size) == (2, 1, 2)
    assert nlvr2.pixel_values.shape == (4, 3, 32, 32)
    assert nlvr2.input_ids.shape[0] == 2
    # padding and special tokens never belong to a word
    assert (nlvr2.word_index[nlvr2.attention_mask == 0] == -1).all()
    assert (nlvr2.word_index[:, 0] == -1).all()


def test_mixed_batch_is_rejected(processor: Processor, task_batches) -> None:
    examples, images = task_batches["vqa"]
    odd = TaskExample("x", "vqa", (Path("a.png"),), ("one", "two"))
    with pytest.raises(ValueError, match="example x"):
        processor([examples[0], odd], images)


def test_fingerprint_stable_and_sensitive(processor: Processor, minilm_path: Path) -> None:
    again = Processor.for_text_model(minilm_path, image_size=32)
    before = again.fingerprint()
    again.tokenize(["calls change the backend's truncation state"])
    assert again.fingerprint() == before == processor.fingerprint()
    assert Processor.for_text_model(minilm_path, image_size=64).fingerprint() != before
    assert Processor.for_text_model(minilm_path, image_size=32, max_length=20).fingerprint() != before


def test_from_pretrained_reads_image_config(processor: Processor, tmp_path: Path) -> None:
    processor.tokenizer.save_pretrained(tmp_path)
    config = {
        "do_center_crop": True,
        "crop_size": {"height": 48, "width": 40},
        "size": {"shortest_edge": 56},
        "image_mean": [0.48, 0.45, 0.40],
        "image_std": [0.26, 0.26, 0.27],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    loaded = Processor.from_pretrained(tmp_path)
    assert loaded.image_size == (48, 40)
    assert loaded.image_mean == (0.48, 0.45, 0.40) and loaded.image_std == (0.26, 0.26, 0.27)
    assert Processor.from_pretrained(tmp_path, image_size=32).image_size == (32, 32)
    assert loaded.fingerprint() != processor.fingerprint()


def test_reads_a_vilt_processor_saved_by_transformers_5(processor: Processor, tmp_path: Path) -> None:
    """transformers 5 writes processor_config.json, the image processor nested: its exact values are read."""
    image = ViltImageProcessorPil(size={"shortest_edge": 96}, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    ViltProcessor(image_processor=image, tokenizer=processor.tokenizer).save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file() and not (tmp_path / "preprocessor_config.json").exists()
    loaded = Processor.from_pretrained(tmp_path)
    assert (loaded.image_size, loaded.image_mean, loaded.image_std) == ((96, 96), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


def test_reads_a_clip_processor_saved_by_transformers_5(processor: Processor, tmp_path: Path) -> None:
    """CLIP resizes then centre-crops: the crop is the size the model sees."""
    image = CLIPImageProcessorPil(
        size={"shortest_edge": 56},
        crop_size={"height": 48, "width": 40},
        image_mean=[0.11, 0.22, 0.33],
        image_std=[0.7, 0.8, 0.9],
    )
    CLIPProcessor(image_processor=image, tokenizer=processor.tokenizer).save_pretrained(tmp_path)
    loaded = Processor.from_pretrained(tmp_path)
    assert (loaded.image_size, loaded.image_mean, loaded.image_std) == ((48, 40), (0.11, 0.22, 0.33), (0.7, 0.8, 0.9))


def test_settings_left_to_the_image_processor_class_take_its_defaults(processor: Processor, tmp_path: Path) -> None:
    processor.tokenizer.save_pretrained(tmp_path)
    config = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 64}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    loaded = Processor.from_pretrained(tmp_path)
    # CLIPImageProcessor's defaults: centre crop to 224 x 224, OpenAI's mean and std.
    assert loaded.image_size == (224, 224)
    assert loaded.image_mean == (0.48145466, 0.4578275, 0.40821073)
    assert loaded.image_std == (0.26862954, 0.26130258, 0.27577711)


def test_no_image_settings_is_an_error_naming_the_folder(minilm_path: Path) -> None:
    """A text checkpoint has no image settings: no silent 224 px and 0.5 mean/std."""
    with pytest.raises(ConfigError, match=f"{minilm_path}: no image settings .*processor_config.json"):
        Processor.from_pretrained(minilm_path)
    text_only = Processor.for_text_model(minilm_path, image_size=16)
    assert (text_only.image_size, text_only.image_mean, text_only.image_std) == ((16, 16), (0.5,) * 3, (0.5,) * 3)


def test_saved_processor_round_trips_and_transformers_reads_it(processor: Processor, tmp_path: Path) -> None:
    """vldistill's own save: read back exactly, and transformers' AutoImageProcessor makes the same pixels."""
    mine = Processor(processor.tokenizer, (32, 48), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), max_length=12)
    mine.save_pretrained(tmp_path)
    again = Processor.from_pretrained(tmp_path, max_length=12)
    assert again.fingerprint() == mine.fingerprint()
    assert AutoTokenizer.from_pretrained(tmp_path).model_max_length == 12
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    theirs = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")(image, return_tensors="pt")["pixel_values"]
    assert theirs.shape == (1, 3, 32, 48)
    assert torch.equal(theirs, mine.images_to_tensor([image]))


def test_unloadable_tokenizer_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load a tokenizer"):
        Processor.from_pretrained(tmp_path / "missing")


def test_tokenizer_without_vocabulary_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ConfigError, match="empty vocabulary"):
        Processor.from_pretrained(tmp_path)
