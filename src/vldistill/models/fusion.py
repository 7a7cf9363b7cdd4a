"""Fusion-encoder student: ViLT (one transformer over text tokens and image patches) with task heads.

The backbone and the heads are transformers' own ViLT classes, one per task, so a saved student is an
ordinary Hugging Face directory:

=========  ==========================================  ======================================
task       transformers class held                     head on the pooled [CLS] vector(s)
=========  ==========================================  ======================================
vqa        ``ViltForQuestionAnswering``                ``classifier`` -> answer vocabulary
snli_ve    ``ViltForImagesAndTextClassification`` (1)  ``classifier`` -> 3 classes
vcr        ``ViltForImageAndTextRetrieval``            ``rank_output`` -> 1 logit per candidate
nlvr2      ``ViltForImagesAndTextClassification`` (2)  ``classifier`` on both views -> 2 classes
=========  ==========================================  ======================================

The same module serves as DiDE's fusion teacher through ``output_cross_attention=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    ViltConfig,
    ViltForImageAndTextRetrieval,
    ViltForImagesAndTextClassification,
    ViltForQuestionAnswering,
    ViltPreTrainedModel,
)

from vldistill.data.examples import TASK_KINDS, view_index
from vldistill.data.records import VE_LABELS
from vldistill.errors import ConfigError
from vldistill.models.heads import head_logits
from vldistill.models.loading import check_loaded_weights, checkpoint_model_type
from vldistill.models.outputs import CrossModalAttention, ModelInputs, StudentOutput

_EPS = 1e-12


def cross_attention_from_joint(
    attn: torch.Tensor,
    text_mask: torch.Tensor,
    image_mask: torch.Tensor,
    n_text: int,
    n_image_prefix: int = 1,
) -> CrossModalAttention:
    """The cross-modal blocks of a joint (text then image) attention map, re-normalised.

    Args:
        attn: ``(N, H, S, S)`` attention probabilities over the sequence ``[text (n_text); image
            prefix tokens (n_image_prefix, e.g. ViLT's image [CLS]); image patches (P)]``.
        text_mask: ``(N, n_text)`` real text tokens; image_mask: ``(N, P)`` real image patches.
        n_text: text length ``L``; n_image_prefix: image tokens before the patches, left out.

    Returns:
        text rows x patch columns, each row re-normalised over real patches (``(N, H, L, P)``), and
        patch rows x text columns re-normalised over real text keys (``(N, H, P, L)``); padded keys
        get exactly 0.
    """
    start = n_text + n_image_prefix
    text_mask, image_mask = text_mask.bool(), image_mask.bool()
    t2i = attn[:, :, :n_text, start:] * image_mask[:, None, None, :]
    i2t = attn[:, :, start:, :n_text] * text_mask[:, None, None, :]
    t2i = t2i / t2i.sum(-1, keepdim=True).clamp_min(_EPS)
    i2t = i2t / i2t.sum(-1, keepdim=True).clamp_min(_EPS)
    return CrossModalAttention(t2i, i2t, text_mask, image_mask)


def _hf_class(task: str) -> type[ViltPreTrainedModel]:
    return {
        "vqa": ViltForQuestionAnswering,
        "snli_ve": ViltForImagesAndTextClassification,
        "vcr": ViltForImageAndTextRetrieval,
        "nlvr2": ViltForImagesAndTextClassification,
    }[task]


def task_config_kwargs(task: str, num_labels: int, answers: list[str] | None) -> dict:
    """Config fields that a task's head needs (labels, number of images per example)."""
    if task not in TASK_KINDS:
        raise ConfigError(f"unknown task {task!r}; fix: use one of {sorted(TASK_KINDS)}")
    if task == "vqa":
        if not answers or len(answers) != num_labels:
            raise ConfigError(f"vqa needs the answer vocabulary ({num_labels} answers); fix: pass answers")
        labels = list(answers)
    elif task == "snli_ve":
        labels = list(VE_LABELS)
    elif task == "nlvr2":
        labels = ["False", "True"]
    else:
        labels = ["match"]
    # num_labels follows from id2label (passing both makes transformers warn when they disagree).
    kwargs: dict = {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if task in ("snli_ve", "nlvr2"):
        kwargs["num_images"] = 2 if task == "nlvr2" else 1
    return kwargs


def _add_second_image_type(model: ViltPreTrainedModel) -> None:
    """Give NLVR2's second image its own modality type, initialised from the first (as ViLT does)."""
    old = model.vilt.embeddings.token_type_embeddings
    if old.num_embeddings >= 3:
        return
    new = nn.Embedding(3, old.embedding_dim).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight[:2] = old.weight
        new.weight[2] = old.weight[1]
    model.vilt.embeddings.token_type_embeddings = new
    model.config.modality_type_vocab_size = 3


class FusionStudent(nn.Module):
    """ViLT student: ``forward(inputs) -> StudentOutput`` for one task.

    Args:
        model: the transformers ViLT model with this task's head (see the module table).
        task: one of ``TASK_KINDS``.
    """

    def __init__(self, model: ViltPreTrainedModel, task: str) -> None:
        super().__init__()
        if not isinstance(model, _hf_class(task)):
            raise ConfigError(f"task {task} needs a {_hf_class(task).__name__}, got {type(model).__name__}")
        self.model = model
        self.task = task
        self.patch_size = model.config.patch_size

    @classmethod
    def from_config(
        cls, config: ViltConfig, task: str, num_labels: int, answers: list[str] | None = None
    ) -> FusionStudent:
        """A randomly initialised student from a ``ViltConfig`` (its head fields are set here)."""
        for key, value in task_config_kwargs(task, num_labels, answers).items():
            setattr(config, key, value)
        if task == "nlvr2":
            config.modality_type_vocab_size = max(config.modality_type_vocab_size, 3)
        config._attn_implementation = "eager"
        return cls(_hf_class(task)(config), task)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        task: str,
        num_labels: int,
        answers: list[str] | None = None,
        *,
        key: str = "student.pretrained",
        new_head_ok: bool = True,
    ) -> FusionStudent:
        """Load a ViLT checkpoint (hub id or directory) with ``task``'s head.

        A head the checkpoint lacks, or holds for another label set, starts anew when ``new_head_ok``
        (fine-tuning a pre-trained ViLT); every other weight must come from the checkpoint.

        Raises:
            ConfigError: not a ViLT checkpoint, or backbone weights missing (the message names ``key``).
        """
        name = str(name_or_path)
        model_type = checkpoint_model_type(name, key)
        if model_type != "vilt":
            raise ConfigError(
                f"{key} '{name}' is a {model_type} checkpoint, not ViLT (model_type 'vilt'); fix: give a ViLT "
                "checkpoint (e.g. dandelin/vilt-b32-mlm) or a fusion student saved by vldistill"
            )
        try:
            model, info = _hf_class(task).from_pretrained(
                name,
                attn_implementation="eager",
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                **task_config_kwargs(task, num_labels, answers),
            )
        except (OSError, ValueError) as err:
            raise ConfigError(f"{key} '{name}': cannot load it ({err}); fix: give a complete ViLT folder") from err
        head = ("rank_output." if task == "vcr" else "classifier.",) if new_head_ok else ()
        fix = (
            f"give a ViLT checkpoint with all its weights (only the {task} head may be new)"
            if new_head_ok
            else f"give a ViLT checkpoint fine-tuned on {task}, with all its weights"
        )
        check_loaded_weights(info, name, key, new_ok=head, fix=fix)
        if task == "nlvr2":
            _add_second_image_type(model)
        return cls(model, task)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (loadable by plain transformers)."""
        self.model.save_pretrained(str(directory))

    @property
    def config(self) -> ViltConfig:
        return self.model.config

    def image_embeddings(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(N, 1 + P, D)`` image [CLS] + patch embeddings with positions, patches row-major.

        ViLT's own ``visual_embed`` draws a random permutation of the patches when no image is
        padded, so token order would change every call; distillation needs patches on their grid,
        so we embed here (same arithmetic, fixed order) and pass ``image_embeds`` to ViltModel.
        """
        emb = self.model.vilt.embeddings
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"image size {height}x{width} is not divisible by ViLT's patch size {self.patch_size}; "
                "fix: set the processor's image_size to a multiple of the patch size"
            )
        patches = emb.patch_embeddings(pixel_values)  # (N, D, rows, cols)
        n, dim, rows, cols = patches.shape
        side = self.config.image_size // self.patch_size
        spatial = emb.position_embeddings[:, 1:, :].transpose(1, 2).reshape(1, dim, side, side)
        spatial = nn.functional.interpolate(spatial, size=(rows, cols), mode="bilinear", align_corners=True)
        tokens = (patches + spatial).flatten(2).transpose(1, 2)
        cls_token = (emb.cls_token + emb.position_embeddings[:, :1, :]).expand(n, -1, -1)
        return torch.cat([cls_token, tokens], dim=1), (rows, cols)

    def forward(self, inputs: ModelInputs, output_cross_attention: bool = False) -> StudentOutput:
        """Logits ``(B, C)`` and per-view features; see ``StudentOutput`` for every shape."""
        batch = inputs.batch_size
        img_idx, txt_idx = view_index(inputs.task, batch, inputs.n_images, inputs.n_texts)
        img_idx, txt_idx = img_idx.to(inputs.input_ids.device), txt_idx.to(inputs.input_ids.device)
        image_embeds, grid = self.image_embeddings(inputs.pixel_values)
        image_embeds = image_embeds[img_idx]
        emb = self.model.vilt.embeddings
        if inputs.n_images > 1 and emb.token_type_embeddings.num_embeddings > inputs.n_images:
            # Image k of an example has modality type k + 1 (ViltForImagesAndTextClassification);
            # ViltModel adds type 1 to all, so add the difference here and run all views at once.
            types = emb.token_type_embeddings.weight
            position = (img_idx % inputs.n_images) + 1
            image_embeds = image_embeds + (types[position] - types[1])[:, None, :]
        image_embeds = emb.dropout(image_embeds)
        text_mask = inputs.attention_mask[txt_idx]
        n_text, n_patches = text_mask.shape[1], image_embeds.shape[1] - 1
        out = self.model.vilt(
            input_ids=inputs.input_ids[txt_idx],
            attention_mask=text_mask,
            image_embeds=image_embeds,
            pixel_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device),
            image_token_type_idx=1,
            output_attentions=True,
            output_hidden_states=True,
            return_dict=True,
        )
        pooled = out.pooler_output
        head = self.model.rank_output if self.task == "vcr" else self.model.classifier
        logits = head_logits(self.task, head, pooled, batch)
        attn = out.attentions[-1]  # (B*V, H, S, S), S = L + 1 + P
        keep = torch.cat([torch.arange(n_text), torch.arange(n_text + 1, n_text + 1 + n_patches)])
        image_mask = torch.ones(pooled.shape[0], n_patches, dtype=torch.bool, device=pooled.device)
        cross = None
        if output_cross_attention:
            cross = cross_attention_from_joint(attn, text_mask, image_mask, n_text, n_image_prefix=1)

        def layer_cross_attention(layer: int) -> CrossModalAttention:
            if not 1 <= layer <= len(out.attentions):
                raise ValueError(f"layer {layer} is not one of 1..{len(out.attentions)}")
            return cross_attention_from_joint(out.attentions[layer - 1], text_mask, image_mask, n_text, 1)

        return StudentOutput(
            logits=logits,
            text_tokens=out.last_hidden_state[:, :n_text],
            text_mask=text_mask.bool(),
            text_word_index=inputs.word_index[txt_idx],
            image_tokens=out.last_hidden_state[:, n_text + 1 :],
            image_mask=image_mask,
            image_grid=grid,
            pooled=pooled,
            cls_attention=attn[:, :, 0, keep.to(attn.device)],
            cross_attention=cross,
            text_hidden_states=tuple(h[:, :n_text] for h in out.hidden_states),
            image_hidden_states=tuple(h[:, n_text + 1 :] for h in out.hidden_states),
            layer_cross_attention=layer_cross_attention,
        )
