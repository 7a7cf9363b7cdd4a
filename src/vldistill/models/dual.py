"""Dual-encoder student (DiDE): an image tower and a text tower that never attend to each other.

The towers are transformers models (``ViTModel`` or ``CLIPVisionModel``; ``BertModel`` or any
``AutoModel`` text encoder). A shallow MLP fuses the two pooled vectors per view and the task heads of
``vldistill.models.heads`` score the fused vector. Because the towers are independent, an image is
encoded once (``encode_images``) and reused for every question about it (``forward_encoded``).

DiDE's cross-modal attention is recomputed from the towers' last layers: the last layer's input
hidden states go through that layer's own pre-attention layernorm (if any) and query/key projections,
and text queries attend over image keys (and the reverse) with ``softmax(Q K^T / sqrt(d_head))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec

from vldistill.data.examples import view_index
from vldistill.errors import ConfigError
from vldistill.models.fusion import task_config_kwargs
from vldistill.models.heads import build_head, head_logits
from vldistill.models.loading import check_loaded_weights, checkpoint_model_type
from vldistill.models.outputs import CrossModalAttention, ModelInputs, StudentOutput
from vldistill.models.pooling import end_token_pool


@strict
class DualEncoderConfig(PreTrainedConfig):
    """Config of a ``DualEncoderStudent``: the two towers' configs, the task and its labels."""

    model_type = "vldistill-dual-encoder"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
    }
    text_config: PreTrainedConfig | dict | None = None
    vision_config: PreTrainedConfig | dict | None = None
    task: str = "vqa"
    initializer_range: float = 0.02


@dataclass
class TowerEncoding:
    """One tower's output for a batch of images or texts, reusable across views.

    Attributes:
        tokens: ``(N, S, D)`` last-layer token features projected to the common size ``D`` (images:
            patch tokens without [CLS], ``S = P``; texts: all ``S = L`` tokens).
        pooled: ``(N, D)`` pooled vector, projected.
        mask: ``(N, S)`` bool, real tokens.
        query, key: ``(N, H, S, d_head)`` the last layer's attention queries and keys of the same
            tokens (None unless requested), for DiDE's cross-modal attention.
        grid: ``(rows, cols)`` of the patch grid (images), None for texts.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None
    grid: tuple[int, int] | None = None

    def select(self, rows: torch.Tensor | list[int]) -> TowerEncoding:
        """The encodings of ``rows`` (e.g. one cached image repeated for each of its questions)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.tokens.device)
        return TowerEncoding(
            self.tokens[rows],
            self.pooled[rows],
            self.mask[rows],
            None if self.query is None else self.query[rows],
            None if self.key is None else self.key[rows],
            self.grid,
        )


_TOWER_FIX = "give a checkpoint of a ViT, CLIP or BERT-family encoder with all its weights"


def _last_layer(model: PreTrainedModel) -> nn.Module:
    for path in (
        "layers",
        "encoder.layer",
        "encoder.layers",
        "vision_model.encoder.layers",
        "text_model.encoder.layers",
    ):
        module: object = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module[-1]
    raise ConfigError(f"{type(model).__name__}: cannot find its encoder layers; fix: use a BERT/ViT/CLIP tower")


def _query_key(model: PreTrainedModel, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, H, S, d_head)`` queries and keys of the last layer from its input ``hidden`` ``(N, S, D)``.

    Layouts: ViT (pre-LN ``layernorm_before``, ``attention.q_proj``), CLIP (pre-LN ``layer_norm1``,
    ``self_attn.q_proj``), BERT family (post-LN, ``attention.self.query``).
    """
    layer = _last_layer(model)
    if hasattr(layer, "layernorm_before"):
        hidden, attn = layer.layernorm_before(hidden), layer.attention
        q_proj, k_proj = attn.q_proj, attn.k_proj
    elif hasattr(layer, "layer_norm1"):
        hidden, attn = layer.layer_norm1(hidden), layer.self_attn
        q_proj, k_proj = attn.q_proj, attn.k_proj
    elif hasattr(getattr(layer, "attention", None), "self"):
        q_proj, k_proj = layer.attention.self.query, layer.attention.self.key
    else:
        raise ConfigError(
            f"{type(model).__name__}: unknown attention layout for DiDE cross-attention; "
            "fix: use a ViT, CLIP or BERT-family tower"
        )
    heads = model.config.num_attention_heads
    shape = (*hidden.shape[:2], heads, -1)
    return q_proj(hidden).view(shape).transpose(1, 2), k_proj(hidden).view(shape).transpose(1, 2)


def _masked_attention(query: torch.Tensor, key: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """``softmax(Q K^T / sqrt(d))`` over real keys.

    ``(N, H, Sq, d)`` queries, ``(N, H, Sk, d)`` keys, ``(N, Sk)`` bool mask -> ``(N, H, Sq, Sk)``,
    exactly 0 on padded keys.
    """
    if query.shape[1] != key.shape[1] or query.shape[-1] != key.shape[-1]:
        raise ConfigError(
            f"DiDE cross-attention needs equal heads and head size in both towers, got "
            f"{query.shape[1]}x{query.shape[-1]} (queries) and {key.shape[1]}x{key.shape[-1]} (keys); "
            "fix: choose towers with the same num_attention_heads and hidden_size / heads"
        )
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(-1) * key_mask[:, None, None, :]


def load_tower(name_or_path: str | Path, modality: str, key: str) -> PreTrainedModel:
    """A pretrained tower (hub id or directory) with eager attention.

    ``modality`` is "image" or "text"; a full CLIP checkpoint gives its vision or its text tower. Every
    weight must come from the checkpoint except a pooler (``pooler.*``: RoBERTa and many ViT checkpoints
    ship none; it feeds the new fusion MLP and is trained with it).

    Raises:
        ConfigError: no readable config, or weights missing (the message names ``key``).
    """
    name = str(name_or_path)
    model_type = checkpoint_model_type(name, key) or ""
    clip = model_type.startswith("clip")
    if modality == "image":
        cls = CLIPVisionModel if clip else AutoModel
    else:
        cls = CLIPTextModel if clip else AutoModel
    try:
        model, info = cls.from_pretrained(name, attn_implementation="eager", output_loading_info=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key} '{name}': cannot load it as a {modality} tower ({err}); fix: {_TOWER_FIX}") from err
    check_loaded_weights(info, name, key, new_ok=("pooler.",), fix=_TOWER_FIX)
    return model


def tower_from_config(config: PreTrainedConfig) -> PreTrainedModel:
    if isinstance(config, CLIPVisionConfig):
        return CLIPVisionModel._from_config(config, attn_implementation="eager")
    if isinstance(config, CLIPTextConfig):
        return CLIPTextModel._from_config(config, attn_implementation="eager")
    return AutoModel.from_config(config, attn_implementation="eager")


class DualEncoderStudent(PreTrainedModel):
    """Image tower + text tower + fusion MLP + task head; ``forward(inputs) -> StudentOutput``.

    The common size ``D`` is the text tower's hidden size; image features are projected to it
    when the image tower's differs.

    Not a transformers class, but a ``PreTrainedModel``: a student that vldistill saved loads with this
    class's own ``from_pretrained``, and its inputs come from vldistill's processor saved beside it::

        from vldistill.models.dual import DualEncoderStudent
        from vldistill.models.processing import Processor
        model = DualEncoderStudent.from_pretrained("run/final").eval()
        processor = Processor.from_pretrained("run/final")
        logits = model(processor(examples, images)).logits  # examples: vldistill TaskExample records
    """

    config_class = DualEncoderConfig
    config: DualEncoderConfig
    base_model_prefix = "dual"
    input_modalities = ("image", "text")

    def __init__(
        self,
        config: DualEncoderConfig,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        self.vision_model = vision_model or tower_from_config(config.vision_config)
        self.text_model = text_model or tower_from_config(config.text_config)
        image_size, size = config.vision_config.hidden_size, config.text_config.hidden_size
        self.image_projection = nn.Linear(image_size, size) if image_size != size else nn.Identity()
        # [img; txt; img*txt; |img-txt|] -> D: the shallow fusion of DiDE's dual encoder.
        self.fusion = nn.Sequential(nn.Linear(4 * size, size), nn.GELU(), nn.LayerNorm(size))
        self.head = build_head(config.task, size, config.num_labels)
        self.post_init()

    @classmethod
    def from_towers(
        cls,
        vision_model: PreTrainedModel,
        text_model: PreTrainedModel,
        task: str,
        num_labels: int,
        answers: list[str] | None = None,
    ) -> DualEncoderStudent:
        """A student around two (pretrained) towers; projection, fusion and head start random."""
        kwargs = task_config_kwargs(task, num_labels, answers)
        kwargs.pop("num_images", None)
        config = DualEncoderConfig(
            vision_config=vision_model.config.to_dict(),
            text_config=text_model.config.to_dict(),
            task=task,
            **kwargs,
        )
        return cls(config, vision_model=vision_model, text_model=text_model)

    @property
    def task(self) -> str:
        return self.config.task

    def encode_images(self, pixel_values: torch.Tensor, with_query_key: bool = False) -> TowerEncoding:
        """Encode ``(N, 3, height, width)`` images once; patches only, ``P = rows * cols``."""
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=with_query_key, return_dict=True)
        patch = self.config.vision_config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        tokens = out.last_hidden_state[:, 1:]
        pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
        query = key = None
        if with_query_key:
            query, key = _query_key(self.vision_model, out.hidden_states[-2][:, 1:])
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TowerEncoding(self.image_projection(tokens), self.image_projection(pooled), mask, query, key, grid)

    def encode_texts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_query_key: bool = False
    ) -> TowerEncoding:
        """Encode ``(N, L)`` token ids once."""
        out = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=with_query_key,
            return_dict=True,
        )
        if isinstance(self.text_model, CLIPTextModel):  # at the end token whatever its id: see end_token_pool
            pooled = end_token_pool(out.last_hidden_state, attention_mask)
        else:
            pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
        query = key = None
        if with_query_key:
            query, key = _query_key(self.text_model, out.hidden_states[-2])
        return TowerEncoding(out.last_hidden_state, pooled, attention_mask.bool(), query, key)

    def forward_encoded(
        self,
        image_enc: TowerEncoding,
        text_enc: TowerEncoding,
        inputs: ModelInputs,
        output_cross_attention: bool = False,
    ) -> StudentOutput:
        """Fuse cached encodings per view (``inputs`` gives the task, layout and word index)."""
        batch = inputs.batch_size
        img_idx, txt_idx = view_index(inputs.task, batch, inputs.n_images, inputs.n_texts)
        img_idx, txt_idx = img_idx.to(text_enc.pooled.device), txt_idx.to(text_enc.pooled.device)
        img, txt = image_enc.pooled[img_idx], text_enc.pooled[txt_idx]
        pooled = self.fusion(torch.cat([img, txt, img * txt, (img - txt).abs()], dim=-1))
        text_mask, image_mask = text_enc.mask[txt_idx], image_enc.mask[img_idx]
        cross = None
        if output_cross_attention:
            if image_enc.query is None or text_enc.query is None:
                raise ValueError("encode with with_query_key=True to get cross-modal attention")
            cross = CrossModalAttention(
                text_to_image=_masked_attention(text_enc.query[txt_idx], image_enc.key[img_idx], image_mask),
                image_to_text=_masked_attention(image_enc.query[img_idx], text_enc.key[txt_idx], text_mask),
                text_mask=text_mask,
                image_mask=image_mask,
            )
        return StudentOutput(
            logits=head_logits(self.task, self.head, pooled, batch),
            text_tokens=text_enc.tokens[txt_idx],
            text_mask=text_mask,
            text_word_index=inputs.word_index[txt_idx],
            image_tokens=image_enc.tokens[img_idx],
            image_mask=image_mask,
            image_grid=image_enc.grid,
            pooled=pooled,
            cross_attention=cross,
        )

    def forward(self, inputs: ModelInputs, output_cross_attention: bool = False) -> StudentOutput:
        """Encode both modalities and fuse; see ``StudentOutput`` for every shape."""
        image_enc = self.encode_images(inputs.pixel_values, with_query_key=output_cross_attention)
        text_enc = self.encode_texts(inputs.input_ids, inputs.attention_mask, with_query_key=output_cross_attention)
        return self.forward_encoded(image_enc, text_enc, inputs, output_cross_attention)
