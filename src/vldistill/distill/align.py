"""Put student and teacher tokens on the same positions so they can be compared one to one.

A student and its teachers rarely share a tokenizer or a patch grid: ViLT cuts "skateboarding" into
two word pieces where RoBERTa's BPE cuts it into three, and EfficientNet's 7x7 feature map does not sit
on a ViT's 4x4 patch grid. None of the three papers (CLIP-TD arXiv 2201.05729, MAD arXiv 2204.10496,
DiDE arXiv 2112.08723) says how they pair tokens across models. Our choice: text is compared **word by
word** (mean of each word's sub-word tokens, :func:`pool_words`) and images **cell by cell** on the
coarser of the two grids (adaptive average pooling, :func:`pool_grid`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_words(
    tokens: torch.Tensor, word_index: torch.Tensor, max_words: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the token features of each word.

    Args:
        tokens: ``(N, L, D)`` token features.
        word_index: ``(N, L)`` long, the word each token belongs to (0-based, in text order); -1 for
            special and padding tokens, which are ignored.
        max_words: ``W``, the number of word slots returned; words ``>= W`` are dropped. Pass the same
            value for student and teacher so their outputs line up. ``None``: ``W`` = the largest word
            count present in the batch.

    Returns:
        ``words`` ``(N, W, D)``: the mean feature of each word's tokens (zeros for empty slots), and
        ``mask`` ``(N, W)`` bool: True where the word has at least one token. Gradients flow back to
        the tokens that were averaged, and only to them.

    Example:
        "a skate board" tokenized as ``[CLS] a skate ##board [SEP]``::

            tokens[0, :, 0] = [9., 1., 2., 4., 9.]
            word_index[0]   = [-1, 0, 1, 1, -1]
            words, mask = pool_words(tokens, word_index, max_words=3)
            words[0, :, 0] == [1., 3., 0.]          # "a", mean(2, 4), empty slot
            mask[0]        == [True, True, False]
    """
    if tokens.shape[:2] != word_index.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and word_index {tuple(word_index.shape)} disagree")
    n, _, d = tokens.shape
    if max_words is None:
        max_words = int(word_index.max().item()) + 1 if word_index.numel() else 0
    keep = (word_index >= 0) & (word_index < max_words)
    # One flat slot per (instance, word); index_add keeps the autograd path to the kept tokens only.
    rows = torch.arange(n, device=tokens.device).unsqueeze(1).expand_as(word_index)
    slot = (rows * max_words + word_index)[keep]
    sums = tokens.new_zeros(n * max_words, d).index_add(0, slot, tokens[keep])
    counts = tokens.new_zeros(n * max_words).index_add(0, slot, tokens.new_ones(slot.shape[0]))
    words = sums / counts.clamp(min=1).unsqueeze(1)
    return words.view(n, max_words, d), (counts > 0).view(n, max_words)


def pool_grid(tokens: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of a row-major token grid onto another grid.

    Cell ``(i, j)`` of the target averages the source rows ``floor(i * h / h2) .. ceil((i + 1) * h / h2)``
    and likewise for columns (``torch.nn.functional.adaptive_avg_pool2d``), so a 7x7 teacher map pooled
    to a 4x4 student grid uses overlapping windows. A target finer than the source repeats cells.

    Args:
        tokens: ``(N, P, D)`` with ``P == h * w``, row-major (token ``r * w + c`` is row ``r``, col ``c``).
        grid: ``(h, w)`` of ``tokens``.
        target: ``(h2, w2)`` of the result.

    Returns:
        ``(N, h2 * w2, D)`` row-major; ``tokens`` itself when ``grid == target``.

    Example:
        A 4x4 grid holding 0..15 pooled to 2x2 averages each 2x2 block::

            pool_grid(torch.arange(16.).view(1, 16, 1), (4, 4), (2, 2))[0, :, 0]
            == [mean(0, 1, 4, 5), mean(2, 3, 6, 7), mean(8, 9, 12, 13), mean(10, 11, 14, 15)]
            == [2.5, 4.5, 10.5, 12.5]
    """
    h, w = grid
    if tokens.shape[1] != h * w:
        raise ValueError(f"{tokens.shape[1]} tokens do not fill a {h}x{w} grid")
    if tuple(grid) == tuple(target):
        return tokens
    n, _, d = tokens.shape
    image = tokens.transpose(1, 2).reshape(n, d, h, w)
    pooled = F.adaptive_avg_pool2d(image, target)
    return pooled.flatten(2).transpose(1, 2)
