"""Turn ``TaskExample`` batches into one model's tensors (``ModelInputs``).

Every student and teacher owns a ``Processor``: its tokenizer, image size and normalisation. Besides
the usual tensors it computes ``word_index`` (the whitespace word of every token), which is what lets
the distillation losses align text tokens of models whose tokenizers differ.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import cached_file

from vldistill.data.examples import TaskExample
from vldistill.errors import ConfigError
from vldistill.models.outputs import ModelInputs

# ViLT's and ViT's normalisation (IMAGENET_STANDARD): used when a checkpoint ships no image config.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_SIZE = 224
_WORD = re.compile(r"\S+")


def word_index_from_offsets(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Index of the whitespace-separated word of ``text`` each token falls in, -1 for none.

    ``offsets`` are the tokenizer's ``(start, end)`` character spans; special and padding tokens have
    an empty span. A token whose span starts on a space (BPE tokenizers that keep the leading space)
    is attributed to the first word character inside it.

    >>> word_index_from_offsets("a dog", [(0, 0), (0, 1), (1, 5), (0, 0)])
    [-1, 0, 1, -1]
    """
    char_word = np.full(len(text), -1, dtype=np.int64)
    for w, match in enumerate(_WORD.finditer(text)):
        char_word[match.start() : match.end()] = w
    out = []
    for start, end in offsets:
        words = char_word[start:end]
        words = words[words >= 0]
        out.append(int(words[0]) if len(words) else -1)
    return out


def _image_config(name_or_path: str | Path) -> dict:
    """The checkpoint's ``preprocessor_config.json`` as a dict, ``{}`` when it has none."""
    try:
        path = cached_file(
            str(name_or_path),
            "preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        return {}
    if path is None:
        return {}
    return json.loads(Path(path).read_text())


def _size_from_config(config: dict) -> int | tuple[int, int] | None:
    """Final image size of an HF image-processor config (the crop when it centre-crops)."""
    size = config.get("crop_size") if config.get("do_center_crop") else None
    size = size if size is not None else config.get("size")
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
    return None


class Processor:
    """Resize, normalise and tokenize a batch of examples for one model.

    Args:
        tokenizer: a *fast* tokenizer (character offsets are needed for ``word_index``).
        image_size: output ``height, width`` (an int for square images); resizing is bicubic.
        image_mean, image_std: per-channel normalisation of pixel values scaled to [0, 1].
        max_length: texts are truncated to this many tokens (special tokens included).
        lowercase: lowercase texts before tokenizing (for cased tokenizers of uncased models).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int | tuple[int, int],
        image_mean: Sequence[float],
        image_std: Sequence[float],
        max_length: int = 40,
        lowercase: bool = False,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; fix: use a checkpoint "
                "with a tokenizer.json (word alignment needs character offsets)"
            )
        self.tokenizer = tokenizer
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.max_length = max_length
        self.lowercase = lowercase

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        image_size: int | tuple[int, int] | None = None,
        max_length: int = 40,
    ) -> Processor:
        """Tokenizer and image settings of a checkpoint (hub id or directory).

        Image mean/std/size come from its ``preprocessor_config.json`` when present (``image_size``
        overrides the size), else ViLT's defaults (0.5 mean and std, 224 px).
        """
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"cannot load a tokenizer from {name_or_path!r} ({err}); fix: give a local directory "
                "or a hub id available offline"
            ) from err
        # A directory or offline hub id without vocabulary files yields a tokenizer of special tokens only.
        if tokenizer.vocab_size <= len(set(tokenizer.all_special_tokens)):
            raise ConfigError(
                f"the tokenizer of {name_or_path!r} has an empty vocabulary (a hub id not available "
                "offline?); fix: give a local directory with the tokenizer files"
            )
        config = _image_config(name_or_path)
        size = image_size or _size_from_config(config) or DEFAULT_IMAGE_SIZE
        return cls(
            tokenizer,
            size,
            config.get("image_mean", DEFAULT_MEAN),
            config.get("image_std", DEFAULT_STD),
            max_length=max_length,
        )

    def images_to_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(N, 3, height, width)`` float: bicubic resize, scale to [0, 1], normalise."""
        height, width = self.image_size
        arrays = [
            np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), np.float32) for im in images
        ]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``word_index``, each ``(N, L)``, L = longest text."""
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        enc = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = enc["offset_mapping"].tolist()
        mask = enc["attention_mask"]
        word_index = torch.tensor([word_index_from_offsets(t, o) for t, o in zip(texts, offsets, strict=True)])
        word_index = word_index.masked_fill(mask == 0, -1)
        return enc["input_ids"], mask, word_index

    def __call__(self, examples: Sequence[TaskExample], images: Sequence[Sequence[Image.Image]]) -> ModelInputs:
        """Tensors for a batch; ``images[b]`` are the loaded images of ``examples[b]`` in order.

        All examples must have the same task and the same number of images and of texts.
        """
        if not examples or len(examples) != len(images):
            raise ValueError(f"need one image list per example, got {len(examples)} examples, {len(images)}")
        first = examples[0]
        n_images, n_texts = len(first.images), len(first.texts)
        for ex, ims in zip(examples, images, strict=True):
            if ex.task != first.task or len(ex.texts) != n_texts or len(ims) != n_images:
                raise ValueError(
                    f"example {ex.uid}: a batch needs one task and {n_images} images / {n_texts} texts "
                    f"per example, got {ex.task} with {len(ims)} images / {len(ex.texts)} texts"
                )
        pixel_values = self.images_to_tensor([im for ims in images for im in ims])
        input_ids, attention_mask, word_index = self.tokenize([t for ex in examples for t in ex.texts])
        return ModelInputs(pixel_values, input_ids, attention_mask, word_index, n_images, n_texts, first.task)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer and ``preprocessor_config.json`` so ``from_pretrained(directory)`` rebuilds this.

        The image settings are a fixed ``height x width`` resize with no centre crop, exactly what
        ``__call__`` does.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        height, width = self.image_size
        config = {
            "do_resize": True,
            "size": {"height": height, "width": width},
            "do_center_crop": False,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))

    def fingerprint(self) -> str:
        """Stable hash of everything that changes the tensors (for teacher-cache keys)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # Truncation/padding are call-time state that the backend keeps after a call: not identity.
            spec = json.loads(backend.to_str())
            spec.pop("truncation", None)
            spec.pop("padding", None)
        else:
            spec = sorted(self.tokenizer.get_vocab().items())
        payload = {
            "tokenizer": spec,
            "tokenizer_class": type(self.tokenizer).__name__,
            "image_size": list(self.image_size),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "max_length": self.max_length,
            "lowercase": self.lowercase,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
