"""Where a text encoder's sentence vector is read: CLIP reads its text at the end token."""

from __future__ import annotations

import torch


def end_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each text's hidden state at its end token: ``(N, L, D)`` states, ``(N, L)`` mask -> ``(N, D)``.

    CLIP (Radford et al. 2021, and OpenAI's ``clip/model.py``: ``x[arange, text.argmax(-1)]``) pools a
    text at its end-of-text token. Every tokenizer vldistill uses ends a text with its end token
    (``<|endoftext|>``, ``</s>``, ``[SEP]``; truncation keeps it) and masks the padding after it, so the
    end token is the last real token, whatever its id. transformers' ``CLIPTextTransformer`` instead
    looks for ``config.eos_token_id``, except that an id of 2 (configs older than transformers PR
    #24773) makes it pool at the highest token id: right for OpenAI's vocabulary, where
    ``<|endoftext|>`` is the highest id, but an arbitrary word with a RoBERTa-style vocabulary, where
    ``</s>`` is 2. A text without real tokens pools at position 0.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask.bool()).argmax(dim=-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
