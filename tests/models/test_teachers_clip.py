"""CLIPTeacher: token/embedding shapes per task, candidate scores against CLIP's own logits, freezing,
save/reload round trips and fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import CLIPModel, CLIPTokenizerFast, PreTrainedTokenizerFast

from vldistill.data.examples import TaskExample
from vldistill.models.processing import Processor
from vldistill.models.teachers import (
    CLIPTeacher,
    TeacherConfig,
    TinyTeacherConfig,
    build_teacher,
    small_clip_config,
)
from vldistill.models.teachers.base import save_processor

# (images per example, texts per example) of each task, and candidates per example of a 2-example batch.
LAYOUT = {"vqa": (1, 1), "snli_ve": (1, 1), "vcr": (1, 4), "nlvr2": (2, 1)}
CANDIDATES = {"vqa": (3, 2), "snli_ve": (3, 3), "vcr": (4, 4), "nlvr2": (2, 2)}


def make_batch(task: str, counts: tuple[int, ...] | None = None, seed: int = 0):
    """Examples of ``task`` with random images; example b has ``counts[b]`` candidates."""
    n_images, n_texts = LAYOUT[task]
    counts = counts or CANDIDATES[task]
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "circle", "square", "left", "big"]
    examples, images = [], []
    for b, k in enumerate(counts):
        texts = tuple(" ".join(rng.choice(words, size=3 + t)) for t in range(n_texts))
        cands = tuple(f"a {words[c]} shape" for c in range(k))
        examples.append(
            TaskExample(
                f"{task}-{b}",
                task,
                tuple(Path(f"{b}-{i}.png") for i in range(n_images)),
                texts,
                label=0,
                candidates=cands,
                gold_candidate=0 if k else -1,
            )
        )
        pixels = rng.integers(0, 256, (n_images, 40, 40, 3), dtype=np.uint8)
        images.append([Image.fromarray(p) for p in pixels])
    return examples, images


@pytest.fixture(scope="module")
def teacher() -> CLIPTeacher:
    torch.manual_seed(0)
    return build_teacher(TeacherConfig(kind="clip", tiny=TinyTeacherConfig()))


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory) -> CLIPTokenizerFast:
    """A CLIP byte-level BPE over printable ASCII with a few merges (CLIP's own tokenizer format)."""
    folder = tmp_path_factory.mktemp("bpe")
    chars = [chr(i) for i in range(33, 127)]
    merges = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>"]
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab = {tok: i for i, tok in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # transformers 5 ignores the vocab_file= keyword: paths go positionally.
    return CLIPTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"))


@pytest.mark.parametrize("task", sorted(LAYOUT))
def test_shapes_on_a_batch_of_each_task(teacher: CLIPTeacher, task: str) -> None:
    examples, images = make_batch(task)
    n_images, n_texts = LAYOUT[task]
    out = teacher.encode(examples, images, candidates=True)
    inputs = teacher.processor(examples, images)
    length = inputs.input_ids.shape[1]
    assert out.image_tokens.shape == (2 * n_images, 16, 32)  # 32 px / patch 8 -> 4 x 4, no [CLS]
    assert out.image_grid == (4, 4)
    assert out.image_embeds.shape == (2 * n_images, 16)
    assert out.image_token_embeds.shape == (2 * n_images, 16, 16)
    assert out.text_tokens.shape == (2 * n_texts, length, 32)
    assert out.text_token_embeds.shape == (2 * n_texts, length, 16)
    assert out.text_embeds.shape == (2 * n_texts, 16)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(2 * n_images))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(2 * n_texts))
    assert torch.equal(out.text_mask, inputs.attention_mask.bool())
    assert torch.equal(out.text_word_index, inputs.word_index)
    k = max(CANDIDATES[task])
    assert out.candidate_logits.shape == out.candidate_mask.shape == (2, k)
    assert out.candidate_mask.sum(dim=1).tolist() == list(CANDIDATES[task])


def test_candidate_logits_match_clip_logits_per_image(teacher: CLIPTeacher) -> None:
    """Each example's scores equal ``CLIPModel.forward``'s logits_per_image for its image and candidates;
    padded slots are masked and hold 0."""
    examples, images = make_batch("vqa", counts=(3, 1, 0, 2))
    out = teacher.encode(examples, images, candidates=True)
    assert out.candidate_mask.tolist() == [[True] * 3, [True, False, False], [False] * 3, [True, True, False]]
    for b, ex in enumerate(examples):
        if not ex.candidates:
            continue
        ids, mask, _ = teacher.processor.tokenize(list(ex.candidates))
        pixels = teacher.processor.images_to_tensor(images[b])
        ref = teacher.model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits_per_image[0]
        torch.testing.assert_close(out.candidate_logits[b, : len(ex.candidates)], ref)
    assert out.candidate_logits[~out.candidate_mask].abs().sum() == 0
    logits, mask = teacher.score_candidates(examples, images)
    torch.testing.assert_close(logits, out.candidate_logits)
    assert torch.equal(mask, out.candidate_mask)


def test_two_image_examples_score_against_their_mean_image_embedding(teacher: CLIPTeacher) -> None:
    examples, images = make_batch("nlvr2")
    out = teacher.encode(examples, images, candidates=True)
    mean = F.normalize(out.image_embeds.view(2, 2, -1).mean(dim=1), dim=-1)
    cand = teacher.encode(
        [TaskExample("c", "vqa", (Path("x"),), ("a red shape",))], [images[0][:1]]
    ).text_embeds  # the first candidate of example 0, "a red shape", as a text
    expected = teacher.logit_scale * (mean[0] @ cand[0])
    torch.testing.assert_close(out.candidate_logits[0, 0], expected)


def test_no_candidates_gives_none_or_empty(teacher: CLIPTeacher) -> None:
    examples, images = make_batch("snli_ve", counts=(0, 0))
    assert teacher.encode(examples, images, candidates=True).candidate_logits is None
    logits, mask = teacher.score_candidates(examples, images)
    assert logits.shape == mask.shape == (2, 0)


def test_image_tokens_are_post_layernormed_patches(teacher: CLIPTeacher) -> None:
    """The patch tokens are on the pooled vector's scale: [CLS] through the same post-layernorm is the
    pooled output, and projecting the tokens gives image_token_embeds."""
    examples, images = make_batch("vqa")
    inputs = teacher.processor(examples, images)
    out = teacher(inputs)
    hidden = teacher.model.vision_model(pixel_values=inputs.pixel_values).last_hidden_state
    torch.testing.assert_close(out.image_tokens, teacher.model.vision_model.post_layernorm(hidden[:, 1:]))
    torch.testing.assert_close(out.image_token_embeds, teacher.model.visual_projection(out.image_tokens))


def test_frozen_and_eval_mode_survives_train(teacher: CLIPTeacher) -> None:
    assert not any(p.requires_grad for p in teacher.parameters())
    wrapper = torch.nn.ModuleDict({"teacher": teacher, "head": torch.nn.Linear(2, 2)})
    wrapper.train()
    assert wrapper["head"].training
    assert not teacher.training and not any(m.training for m in teacher.modules())
    examples, images = make_batch("vqa")
    assert teacher.encode(examples, images).image_tokens.grad_fn is None


def test_clip_bpe_tokenizer_pools_at_end_of_text(bpe_tokenizer: CLIPTokenizerFast) -> None:
    """With CLIP's own tokenizer the text embedding is read at <|endoftext|>, and padding (which is
    also <|endoftext|>) does not move it: a text embeds alike alone and padded in a batch."""
    config = small_clip_config(bpe_tokenizer, max_length=16)
    assert config.text_config.eos_token_id == bpe_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    processor = Processor(bpe_tokenizer, 32, (0.5,) * 3, (0.5,) * 3, max_length=16)
    torch.manual_seed(0)
    teacher = CLIPTeacher.from_config(config, processor)
    examples, images = make_batch("vqa")
    short = TaskExample("s", "vqa", (Path("s"),), ("a red circle",))
    long = TaskExample("l", "vqa", (Path("l"),), ("a big red circle on the left",))
    batch = teacher.encode([short, long], [images[0], images[1]])
    assert batch.text_word_index[0].tolist()[:5] == [-1, 0, 1, 2, -1]
    alone = teacher.encode([short], [images[0]])
    torch.testing.assert_close(batch.text_embeds[0], alone.text_embeds[0])


def test_save_and_reload_round_trip(teacher: CLIPTeacher, tmp_path: Path) -> None:
    teacher.save_pretrained(tmp_path / "clip")
    again = CLIPTeacher.from_pretrained(tmp_path / "clip")
    assert again.processor.fingerprint() == teacher.processor.fingerprint()
    assert again.fingerprint() == teacher.fingerprint()
    examples, images = make_batch("vcr")
    a, b = teacher.encode(examples, images, candidates=True), again.encode(examples, images, candidates=True)
    torch.testing.assert_close(a.image_tokens, b.image_tokens)
    torch.testing.assert_close(a.text_embeds, b.text_embeds)
    torch.testing.assert_close(a.candidate_logits, b.candidate_logits)
    assert not again.training and not any(p.requires_grad for p in again.parameters())


def test_trained_model_reloads_with_another_fingerprint(teacher: CLIPTeacher, tmp_path: Path) -> None:
    """The demo pre-trains ``CLIPModel``s: one contrastive step on a copy, saved, reloads as a teacher
    whose fingerprint differs from the untrained one's."""
    model = CLIPModel._from_config(teacher.model.config)
    model.load_state_dict(teacher.model.state_dict())
    model.train().requires_grad_(True)
    examples, images = make_batch("vqa")
    inputs = teacher.processor(examples, images)
    out = model(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        pixel_values=inputs.pixel_values,
        return_loss=True,
    )
    out.loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.save_pretrained(tmp_path / "trained")
    save_processor(teacher.processor, tmp_path / "trained")
    trained = CLIPTeacher.from_pretrained(tmp_path / "trained")
    assert trained.fingerprint() != teacher.fingerprint()
    assert trained.processor.fingerprint() == teacher.processor.fingerprint()
    assert not torch.equal(trained.model.text_projection.weight, teacher.model.text_projection.weight)


def roberta_style_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer numbered as RoBERTa's (<s> 0, <pad> 1, </s> 2): "there" has the highest id."""
    words = ["the", "dog", "is", "a", "on", "mat", "there"]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: 4 + i for i, w in enumerate(words)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.post_processor = TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>", pad_token="<pad>"
    )


def test_text_pools_at_the_end_token_whatever_its_id() -> None:
    """eos_token_id 2 sends transformers' CLIP to its legacy path (pool at the highest id: "there")."""
    tokenizer = roberta_style_tokenizer()
    config = small_clip_config(tokenizer)
    assert config.text_config.eos_token_id == 2
    torch.manual_seed(0)
    teacher = CLIPTeacher.from_config(config, Processor(tokenizer, 32, (0.5,) * 3, (0.5,) * 3))
    texts = ["there is a dog on the mat", "a dog"]
    examples = [TaskExample(str(i), "snli_ve", (Path("x.png"),), (t,), label=0) for i, t in enumerate(texts)]
    image = Image.new("RGB", (32, 32), (10, 200, 30))
    inputs = teacher.processor(examples, [[image], [image]])
    assert inputs.input_ids.tolist() == [[0, 10, 6, 7, 5, 8, 4, 9, 2], [0, 7, 5, 2, 1, 1, 1, 1, 1]]
    out = teacher(inputs)
    end = out.text_tokens[[0, 1], [8, 3]]  # the </s> of each text
    expected = F.normalize(teacher.model.text_projection(end), dim=-1)
    torch.testing.assert_close(out.text_embeds, expected)
    plain = teacher.model.text_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
    torch.testing.assert_close(plain.pooler_output[0], out.text_tokens[0, 1])  # the trap: at "there"
    assert not torch.allclose(plain.pooler_output[0], end[0])
