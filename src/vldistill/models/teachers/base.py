"""What every frozen teacher shares: frozen eval mode, its own processor, a content fingerprint.

A teacher is never trained by a distillation run, so it is put in eval mode with every parameter's
``requires_grad`` off, and stays that way: a student wrapper calling ``.train()`` on a module tree
that contains the teacher must not turn dropout back on (that would make the teacher's targets noisy
and the teacher cache stale).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vldistill.data.examples import TaskExample
from vldistill.errors import ConfigError
from vldistill.models.loading import check_loaded_weights

if TYPE_CHECKING:
    from PIL import Image

    from vldistill.models.processing import Processor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


_VOLATILE_CONFIG_KEYS = {
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
}


def config_description(config: Any) -> dict[str, Any]:
    """A Hugging Face config as a dict, without the keys that name where or how it was loaded.

    The same weights loaded from the hub or from a local copy must give the same fingerprint, so
    ``_name_or_path``, private attention settings and version stamps are dropped (recursively).
    """

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                str(k): clean(v)
                for k, v in value.items()
                if not str(k).startswith("_") and k not in _VOLATILE_CONFIG_KEYS
            }
        return value

    return clean(config.to_dict())


def save_processor(processor: Processor, directory: str | Path) -> None:
    """Write ``processor`` where ``Processor.from_pretrained`` reads it (see ``Processor.save_pretrained``)."""
    processor.save_pretrained(directory)


def load_checkpoint(
    load: Callable[..., Any], name: str, what: str, *, without_pooler: bool = False, **kwargs: Any
) -> Any:
    """``load(name, **kwargs)`` (a ``from_pretrained``), refusing a checkpoint that lacks weights.

    A weight missing from the checkpoint would be initialised at random: a teacher that teaches noise,
    and a fingerprint (the cache key) that changes on every load. ``without_pooler`` drops BERT/ViT
    poolers, which we never use and many checkpoints do not ship.
    """
    try:
        try:
            extra = {"add_pooling_layer": False} if without_pooler else {}
            model, info = load(name, output_loading_info=True, **extra, **kwargs)
        except TypeError:  # architectures without a pooler option (DistilBERT, CLIP's towers, ...)
            model, info = load(name, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{what} {name!r}: cannot load it ({err}); fix: give a local model directory or a hub id available offline"
        ) from err
    check_loaded_weights(
        info, name, what, fix="give a checkpoint of this architecture with all its weights (a teacher is never trained)"
    )
    return model


def weights_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer: name, dtype, shape and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        # Reinterpreting as bytes works for every dtype (bfloat16 has no numpy equivalent).
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Teacher(nn.Module, ABC):
    """A frozen teacher: subclasses build their modules, then call :meth:`freeze`.

    Attributes:
        processor: turns ``TaskExample``s and their images into this teacher's ``ModelInputs``
            (its own tokenizer, image size and normalisation).
        kind: ``"clip"``, ``"vision"``, ``"text"`` or ``"fusion"``.
    """

    kind: str = ""

    def __init__(self, processor: Processor) -> None:
        super().__init__()
        self.processor = processor
        self._weights_digest: str | None = None

    def freeze(self) -> None:
        """Eval mode and no gradients, for good (see :meth:`train`)."""
        super().train(False)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> Teacher:
        """Ignore ``mode``: a teacher is always in eval mode (dropout off, batch-norm statistics fixed)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description of the architecture (enters the fingerprint)."""

    @abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Write weights, config and tokenizer: ``from_pretrained(directory)`` rebuilds this teacher."""

    def fingerprint(self) -> str:
        """sha256 of the architecture, the weights and the processor: the key of the teacher cache.

        The weights' hash is computed once and remembered: a teacher's weights never change.
        """
        if self._weights_digest is None:
            self._weights_digest = weights_digest(self)
        payload = json.dumps(
            {
                "kind": self.kind,
                "config": self.describe(),
                "weights": self._weights_digest,
                "processor": self.processor.fingerprint(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def encode(self, examples: Sequence[TaskExample], images: Sequence[Sequence[Image.Image]]) -> Any:
        """Process ``examples`` with this teacher's own processor and run the teacher on them."""
        inputs = self.processor(examples, images).to(self.device)
        return self(inputs)
