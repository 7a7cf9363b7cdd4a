"""CLIP as a frozen teacher (CLIP-TD): both towers' tokens, embeddings and zero-shot candidate scores.

Zero-shot candidates (CLIP-TD's confidence weight) are texts only, so they do not go through the
processor's image path: :meth:`CLIPTeacher.tokenize_candidates` tokenizes every example's
``TaskExample.candidates`` with the teacher's own tokenizer into one flat :class:`CandidateTexts`,
and :meth:`CLIPTeacher.forward` scores them against the example's image. From ``TaskExample``s and
images, ``encode(examples, images, candidates=True)`` gives features and scores in one pass and
``score_candidates(examples, images)`` the scores alone.

Besides the towers' tokens, the output carries them mapped into the joint space by CLIP's own
projections (``image_token_embeds``, ``text_token_embeds``): dotted with the other modality's
embedding they rank tokens by image-text relevance (CLIP-TD's token selection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from vldistill.data.examples import TaskExample
from vldistill.models.outputs import ModelInputs, UnimodalTeacherOutput
from vldistill.models.pooling import end_token_pool
from vldistill.models.processing import Processor
from vldistill.models.teachers.base import Teacher, config_description, load_checkpoint, save_processor

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class CandidateTexts:
    """Every example's zero-shot candidates, tokenized and flattened.

    Attributes:
        input_ids: ``(N, L)`` long, ``N = counts.sum()``, example 0's candidates first.
        attention_mask: ``(N, L)`` long, 1 for real tokens.
        counts: ``(B,)`` long, candidates of each example (0 allowed).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    counts: torch.Tensor

    def to(self, device: torch.device | str) -> CandidateTexts:
        ids, mask, counts = self.input_ids.to(device), self.attention_mask.to(device), self.counts.to(device)
        return CandidateTexts(ids, mask, counts)


@dataclass
class CLIPTeacherOutput(UnimodalTeacherOutput):
    """``UnimodalTeacherOutput`` plus tokens in CLIP's joint space (not normalised).

    Attributes:
        image_token_embeds: ``(B * I, P, E)`` patch tokens through the visual projection.
        text_token_embeds: ``(B * T, L, E)`` text tokens through the text projection.
    """

    image_token_embeds: torch.Tensor | None = None
    text_token_embeds: torch.Tensor | None = None


def small_clip_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    projection_dim: int = 16,
    max_length: int = 40,
) -> CLIPConfig:
    """A small CLIP whose text tower fits ``tokenizer`` (a CLIP BPE or, e.g., the MiniLM WordPiece).

    ``eos_token_id`` is set to the tokenizer's own end token ([SEP] for BERT-style tokenizers,
    ``<|endoftext|>`` for CLIP's, ``</s>`` for RoBERTa's), where plain transformers pools the text; the
    teacher itself pools at the end token whatever its id (``end_token_pool``).
    """
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    tower = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
    )
    return CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=max_length,
            eos_token_id=eos,
            bos_token_id=bos,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )


class CLIPTeacher(Teacher):
    """A frozen ``CLIPModel``; ``self.model`` is the plain Hugging Face model (train it elsewhere,
    ``save_pretrained`` it, reload it with :meth:`from_pretrained`)."""

    kind = "clip"

    def __init__(self, model: CLIPModel, processor: Processor) -> None:
        super().__init__(processor)
        self.model = model
        self.freeze()

    @classmethod
    def from_config(cls, config: CLIPConfig, processor: Processor) -> CLIPTeacher:
        """A randomly initialised CLIP (tests, or a model to pre-train), eager attention."""
        return cls(CLIPModel._from_config(config, attn_implementation="eager"), processor)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, image_size: int | None = None, max_length: int = 40
    ) -> CLIPTeacher:
        """From a hub id (``openai/clip-vit-base-patch16``) or a directory written by ``save_pretrained``."""
        name = str(name_or_path)
        model = load_checkpoint(CLIPModel.from_pretrained, name, "CLIP teacher", attn_implementation="eager")
        processor = Processor.from_pretrained(name, image_size=image_size, max_length=max_length)
        return cls(model, processor)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        save_processor(self.processor, directory)

    def describe(self) -> dict[str, Any]:
        return config_description(self.model.config)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def tokenize_candidates(self, examples: Sequence[TaskExample]) -> CandidateTexts | None:
        """Tokenize each example's ``candidates`` like its texts (None when no example has any)."""
        texts = [c for ex in examples for c in ex.candidates]
        if not texts:
            return None
        input_ids, attention_mask, _ = self.processor.tokenize(texts)
        counts = torch.tensor([len(ex.candidates) for ex in examples], dtype=torch.long)
        return CandidateTexts(input_ids, attention_mask, counts)

    def encode(
        self,
        examples: Sequence[TaskExample],
        images: Sequence[Sequence[Image.Image]],
        *,
        candidates: bool = False,
    ) -> CLIPTeacherOutput:
        """Process ``examples`` and run both towers; with ``candidates``, score them in the same pass."""
        inputs = self.processor(examples, images).to(self.device)
        texts = self.tokenize_candidates(examples) if candidates else None
        return self(inputs, texts.to(self.device) if texts is not None else None)

    @torch.no_grad()
    def score_candidates(
        self, examples: Sequence[TaskExample], images: Sequence[Sequence[Image.Image]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``candidate_logits`` ``(B, K)`` and ``candidate_mask`` ``(B, K)`` alone (image tower and
        candidate texts only; ``K = 0`` when no example has candidates)."""
        inputs = self.processor(examples, images).to(self.device)
        if not any(ex.candidates for ex in examples):
            empty = torch.zeros(len(examples), 0, device=self.device)
            return empty, empty.bool()
        _, embeds, _ = self._image_features(inputs.pixel_values)
        return self.candidate_scores(examples, embeds.view(inputs.batch_size, inputs.n_images, -1))

    @torch.no_grad()
    def candidate_scores(
        self, examples: Sequence[TaskExample], image_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``candidate_logits`` and ``candidate_mask`` ``(B, K)`` from the examples' image embeddings.

        ``image_embeds`` ``(B, I, E)`` are the unit-norm ``image_embeds`` of each example's images (as
        :meth:`forward` returns them, or as the teacher cache stores them per image): only the candidate
        texts go through the text tower. The scores are those of :meth:`forward` (same pooling of
        several images, same scale).
        """
        texts = self.tokenize_candidates(examples)
        if texts is None:
            empty = torch.zeros(len(examples), 0, device=self.device)
            return empty, empty.bool()
        pooled = F.normalize(image_embeds.to(self.device).mean(dim=1), dim=-1)
        return self._score(pooled, texts.to(self.device))

    def token_projections(self) -> dict[str, tuple[str, torch.nn.Linear]]:
        """Target fields that are a projection of another: ``field -> (source field, linear map)``.

        ``image_token_embeds = normalize(visual_projection(image_tokens))`` exactly as :meth:`forward`
        computes it; ``text_word_embeds = normalize(text_projection(text_words))`` equals the pooled
        projected tokens of ``unimodal_targets`` because word pooling is a mean and the projection is
        linear (equal up to float rounding). The teacher cache stores the sources only and derives these.
        """
        return {
            "image_token_embeds": ("image_tokens", self.model.visual_projection),
            "text_word_embeds": ("text_words", self.model.text_projection),
        }

    def _text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer tokens ``(N, L, D)`` and unit-norm projected embeddings ``(N, E)``."""
        out = self.model.text_model(input_ids=ids, attention_mask=mask)
        # At the end token whatever its id (not ``pooler_output``: see ``end_token_pool``).
        embeds = F.normalize(self.model.text_projection(end_token_pool(out.last_hidden_state, mask)), dim=-1)
        return out.last_hidden_state, embeds

    def _image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Patch tokens ``(N, P, D)`` after post-layernorm, unit-norm embeddings ``(N, E)``, grid."""
        vision_config = self.model.config.vision_config
        vision = self.model.vision_model(
            pixel_values=pixels, interpolate_pos_encoding=pixels.shape[-1] != vision_config.image_size
        )
        # CLIP layer-normalises only its pooled [CLS]; patches get the same norm to share its scale.
        tokens = self.model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:])
        embeds = F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)
        patch = vision_config.patch_size
        return tokens, embeds, (pixels.shape[-2] // patch, pixels.shape[-1] // patch)

    @staticmethod
    def _example_image_embeds(image_embeds: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
        """``(B, E)``: each example's image embedding, the normalised mean when it has several (NLVR2)."""
        return F.normalize(image_embeds.view(inputs.batch_size, inputs.n_images, -1).mean(dim=1), dim=-1)

    @torch.no_grad()
    def forward(self, inputs: ModelInputs, candidates: CandidateTexts | None = None) -> CLIPTeacherOutput:
        """Both towers on ``inputs``; candidate scores when ``candidates`` is given.

        Returns ``CLIPTeacherOutput`` with image_tokens ``(B * I, P, D_v)`` (last-layer patch tokens
        without [CLS], after CLIP's post-layernorm), image_grid ``(H / patch, W / patch)``,
        image_embeds ``(B * I, E)`` unit norm, image_token_embeds ``(B * I, P, E)``, text_tokens
        ``(B * T, L, D_t)``, text_mask ``(B * T, L)`` bool, text_word_index ``(B * T, L)``,
        text_embeds ``(B * T, E)`` unit norm, text_token_embeds ``(B * T, L, E)``; with candidates:
        candidate_logits ``(B, K)``, ``K`` the largest count, ``logit_scale * cos(image, candidate)``
        (padding positions hold 0) and candidate_mask ``(B, K)``. An example with several images
        (NLVR2) scores its candidates against the normalised mean of its images' embeddings.
        """
        image_tokens, image_embeds, grid = self._image_features(inputs.pixel_values)
        text_tokens, text_embeds = self._text_features(inputs.input_ids, inputs.attention_mask)
        out = CLIPTeacherOutput(
            image_tokens=image_tokens,
            image_grid=grid,
            image_embeds=image_embeds,
            text_tokens=text_tokens,
            text_mask=inputs.attention_mask.bool(),
            text_word_index=inputs.word_index,
            text_embeds=text_embeds,
            image_token_embeds=self.model.visual_projection(image_tokens),
            text_token_embeds=self.model.text_projection(text_tokens),
        )
        if candidates is not None:
            out.candidate_logits, out.candidate_mask = self._score(
                self._example_image_embeds(image_embeds, inputs), candidates
            )
        return out

    def _score(self, image_embeds: torch.Tensor, candidates: CandidateTexts) -> tuple[torch.Tensor, ...]:
        """``(B, K)`` scaled cosine scores and mask of each example's candidates against its image."""
        _, cand = self._text_features(candidates.input_ids, candidates.attention_mask)
        counts = candidates.counts
        k = int(counts.max()) if counts.numel() else 0
        mask = torch.arange(k, device=counts.device)[None, :] < counts[:, None]
        owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        logits = torch.zeros(mask.shape, dtype=cand.dtype, device=cand.device)
        logits[mask] = self.model.logit_scale.exp() * (cand * image_embeds[owner]).sum(-1)
        return logits, mask
