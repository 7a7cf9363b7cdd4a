import pytest
import torch

from vldistill.distill.align import pool_grid, pool_words


def _sentence() -> tuple[torch.Tensor, torch.Tensor]:
    # Instance 0: "a skate board" -> [CLS] a skate ##board [SEP] [PAD]
    # Instance 1: "red cube"      -> [CLS] red cu ##be [SEP] [PAD]
    features = torch.tensor(
        [
            [[9.0, 9.0], [1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [9.0, 9.0], [7.0, 7.0]],
            [[9.0, 9.0], [3.0, 30.0], [5.0, 50.0], [6.0, 60.0], [9.0, 9.0], [7.0, 7.0]],
        ]
    )
    word_index = torch.tensor([[-1, 0, 1, 1, 2, -1], [-1, 0, 1, 1, -1, -1]])
    # (instance 0's [SEP] is deliberately given word 2 to exercise the max_words cut below)
    return features, word_index


def test_pool_words_averages_subwords_and_masks_missing_words() -> None:
    features, word_index = _sentence()
    words, mask = pool_words(features, word_index, max_words=4)
    # instance 0: "a" = (1, 10); "skate ##board" = mean((2, 20), (4, 40)) = (3, 30); word 2 = (9, 9)
    # instance 1: "red" = (3, 30); "cu ##be" = mean((5, 50), (6, 60)) = (5.5, 55); no word 2
    expected = torch.tensor(
        [
            [[1.0, 10.0], [3.0, 30.0], [9.0, 9.0], [0.0, 0.0]],
            [[3.0, 30.0], [5.5, 55.0], [0.0, 0.0], [0.0, 0.0]],
        ]
    )
    assert torch.allclose(words, expected)
    assert mask.tolist() == [[True, True, True, False], [True, True, False, False]]


def test_pool_words_drops_words_beyond_max_and_infers_width() -> None:
    features, word_index = _sentence()
    words, mask = pool_words(features, word_index, max_words=2)
    assert words.shape == (2, 2, 2)
    assert torch.allclose(words[0, 1], torch.tensor([3.0, 30.0]))  # word 2 = 9s is not mixed in
    assert mask.all()
    inferred, inferred_mask = pool_words(features, word_index, max_words=None)
    assert inferred.shape == (2, 3, 2)  # the largest word index present is 2
    assert inferred_mask.tolist() == [[True, True, True], [True, True, False]]


def test_pool_words_gradient_reaches_only_word_tokens() -> None:
    features, word_index = _sentence()
    features.requires_grad_(True)
    words, _ = pool_words(features, word_index, max_words=2)
    words.sum().backward()
    # d(sum)/d(token) = 1 / (tokens in its word): "a" 1, "skate" 0.5, "##board" 0.5; specials 0
    assert features.grad[0, :, 0].tolist() == [0.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    assert features.grad[1, :, 1].tolist() == [0.0, 1.0, 0.5, 0.5, 0.0, 0.0]


def test_pool_grid_4x4_to_2x2_averages_blocks() -> None:
    grid = torch.arange(16.0).view(1, 16, 1)  # row-major: row r holds 4r .. 4r + 3
    pooled = pool_grid(torch.cat([grid, 10 * grid], dim=2), (4, 4), (2, 2))
    # top-left block (0, 1, 4, 5) -> 2.5; top-right (2, 3, 6, 7) -> 4.5;
    # bottom-left (8, 9, 12, 13) -> 10.5; bottom-right (10, 11, 14, 15) -> 12.5
    assert pooled.shape == (1, 4, 2)
    assert pooled[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    assert pooled[0, :, 1].tolist() == [25.0, 45.0, 105.0, 125.0]


def test_pool_grid_non_square_and_identity() -> None:
    tokens = torch.arange(6.0).view(1, 6, 1)  # 2 rows x 3 cols: [[0, 1, 2], [3, 4, 5]]
    # onto 1x3: column means (0+3)/2, (1+4)/2, (2+5)/2
    assert pool_grid(tokens, (2, 3), (1, 3))[0, :, 0].tolist() == [1.5, 2.5, 3.5]
    assert pool_grid(tokens, (2, 3), (2, 3)) is tokens


def test_pool_grid_overlapping_windows_7_to_4() -> None:
    # adaptive pooling 7 -> 4 uses windows [0, 2), [1, 4), [3, 6), [5, 7) on each axis
    tokens = torch.arange(49.0).view(1, 49, 1)
    pooled = pool_grid(tokens, (7, 7), (4, 4))[0, :, 0]
    # cell (0, 0): rows 0-1, cols 0-1 -> values 0, 1, 7, 8 -> 4.0
    # cell (1, 2): rows 1-3, cols 3-5 -> row means 11, 18, 25 -> 18.0
    assert pooled[0].item() == pytest.approx(4.0)
    assert pooled[1 * 4 + 2].item() == pytest.approx(18.0)


def test_pool_grid_rejects_wrong_token_count() -> None:
    with pytest.raises(ValueError, match="3x3"):
        pool_grid(torch.zeros(1, 8, 2), (3, 3), (2, 2))
