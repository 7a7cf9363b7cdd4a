"""Target normalisation: statistics by hand, the modules, the measured effect, the cache file."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vldistill.distill.normalize import (
    Standardize,
    TokenLayerNorm,
    cached_token_statistics,
    make_target_norm,
    mean_pairwise_cosine,
    statistics_sample,
    token_moments,
)


def test_token_moments_count_real_tokens_only() -> None:
    image = torch.tensor([[[[1.0, 10.0], [3.0, 10.0]]]])  # (B=1, I=1, P=2, D=2)
    words = torch.tensor([[[[2.0, 0.0], [4.0, 2.0], [99.0, 99.0]]]])  # (B=1, T=1, W=3, D=2), word 2 padded
    mask = torch.tensor([[[True, True, False]]])
    batches = [
        {"clip": {"image_tokens": image, "text_words": words, "text_word_mask": mask}},
        {"clip": {"image_tokens": image + 2, "text_words": words, "text_word_mask": mask}},
    ]
    stats = token_moments(batches)
    mean, std, count = stats["clip/image"]
    # channel 0: 1, 3, 3, 5 -> mean 3, variance (4 + 0 + 0 + 4) / 4 = 2; channel 1: 10, 10, 12, 12 -> 11, 1
    assert count == 4 and mean.tolist() == [3.0, 11.0]
    assert std.tolist() == pytest.approx([math.sqrt(2), 1.0])
    mean, std, count = stats["clip/text"]  # the padded word (99) never counts
    assert count == 4 and mean.tolist() == [3.0, 1.0] and std.tolist() == pytest.approx([1.0, 1.0])


def test_standardize_and_layernorm_values() -> None:
    module = Standardize(2)
    with pytest.raises(RuntimeError, match="never fitted"):
        module(torch.zeros(1, 2))
    module.fit(torch.tensor([3.0, 11.0]), torch.tensor([2.0, 0.0]), count=4)
    # channel 1 has std 0: floored at 1e-6, so a token at the mean stays 0 there
    assert module(torch.tensor([[5.0, 11.0], [1.0, 11.0]])).tolist() == [[1.0, 0.0], [-1.0, 0.0]]
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {"mean": (2,), "std": (2,), "count": ()}
    # LayerNorm per token: [1, 3] -> mean 2, std 1 -> [-1, 1] (eps 1e-5 aside)
    assert torch.allclose(TokenLayerNorm()(torch.tensor([[1.0, 3.0]])), torch.tensor([[-1.0, 1.0]]), atol=1e-5)
    assert isinstance(make_target_norm("none", 4), torch.nn.Identity)
    assert not list(make_target_norm("standardize", 4).parameters())  # statistics are buffers, never trained


def test_mean_pairwise_cosine_by_hand() -> None:
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, True, False]])
    # pairs (0,1) 0.7071, (0,2) 0, (1,2) 0.7071 -> 0.4714; the padded token is left out
    assert mean_pairwise_cosine(tokens, mask) == pytest.approx(math.sqrt(2) / 3, abs=1e-6)
    assert math.isnan(mean_pairwise_cosine(tokens, torch.tensor([[True, False, False, False]])))


def test_standardize_removes_the_shared_direction_that_layernorm_keeps() -> None:
    """The numbers quoted in ``normalize``'s docstring."""
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(32, generator=g)
    shared = 10 * shared / shared.norm()

    def draw(n: int) -> torch.Tensor:
        return shared + torch.randn(n, 32, generator=g)

    train = draw(4096)
    mean, std, count = token_moments([{"t": {"image_tokens": train.view(1, 1, 4096, 32)}}])["t/image"]
    standardize = Standardize(32)
    standardize.fit(mean, std, count)
    tokens, mask = draw(64).unsqueeze(0), torch.ones(1, 64, dtype=torch.bool)
    assert mean_pairwise_cosine(tokens, mask) == pytest.approx(0.768, abs=1e-3)
    assert mean_pairwise_cosine(TokenLayerNorm()(tokens), mask) == pytest.approx(0.775, abs=1e-3)
    assert mean_pairwise_cosine(standardize(tokens), mask) == pytest.approx(-0.003, abs=1e-3)
    # A projection that outputs the mean token: nearly perfect on raw targets, useless on standardised ones.
    mean_token = train.mean(0).expand(64, 32)
    raw_distance = (1 - F.cosine_similarity(mean_token, tokens[0], dim=-1)).mean()
    std_distance = (1 - F.cosine_similarity(standardize(mean_token), standardize(tokens[0]), dim=-1)).mean()
    assert float(raw_distance) == pytest.approx(0.123, abs=1e-3)
    assert float(std_distance) == pytest.approx(0.997, abs=1e-3)


def test_statistics_sample_is_evenly_spread() -> None:
    assert statistics_sample(list(range(10)), 4) == [0, 2, 5, 7]
    assert statistics_sample(list(range(3)), 4) == [0, 1, 2]


def test_cached_statistics_are_stored_next_to_the_shards_and_reused(tmp_path) -> None:
    examples = [SimpleNamespace(uid=f"e{i}") for i in range(3)]
    rows = {"e0": [1.0, 4.0], "e1": [3.0, 4.0], "e2": [5.0, 4.0]}
    lookups = []

    def lookup(chunk):
        lookups.append([ex.uid for ex in chunk])
        tokens = torch.tensor([rows[ex.uid] for ex in chunk]).view(len(chunk), 1, 1, 2)
        return {"vision": {"image_tokens": tokens}}

    cache = SimpleNamespace(folder=tmp_path, lookup=lookup)
    stats = cached_token_statistics(cache, examples, chunk=2)
    assert lookups == [["e0", "e1"], ["e2"]]
    mean, std, count = stats["vision/image"]
    assert count == 3 and mean.tolist() == [3.0, 4.0] and std.tolist() == pytest.approx([math.sqrt(8 / 3), 0.0])
    files = list(tmp_path.glob("target-stats-*.safetensors"))
    assert len(files) == 1
    again = cached_token_statistics(cache, examples, chunk=2)
    assert len(lookups) == 2  # read from the file, the cache rows were not read again
    assert again["vision/image"][0].tolist() == [3.0, 4.0] and again["vision/image"][2] == 3
    other = cached_token_statistics(cache, examples[:2])  # another sample: its own file
    assert other["vision/image"][0].tolist() == [2.0, 4.0] and len(list(tmp_path.glob("target-stats-*"))) == 2


def test_loaded_statistics_count_as_fitted() -> None:
    fitted = Standardize(2)
    fitted.fit(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]), count=7)
    fresh = Standardize(2)
    fresh.load_state_dict(fitted.state_dict())
    assert fresh(torch.tensor([[3.0, 6.0]])).tolist() == [[1.0, 1.0]]
    empty = Standardize(2)
    empty.load_state_dict(Standardize(2).state_dict())
    with pytest.raises(RuntimeError, match="never fitted"):
        empty(torch.zeros(1, 2))
