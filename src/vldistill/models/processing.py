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
import transformers
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.image_processing_base import ImageProcessingMixin

from vldistill.data.examples import TaskExample
from vldistill.errors import ConfigError
from vldistill.models.outputs import ModelInputs

# ViLT's and ViT's normalisation (IMAGENET_STANDARD): for random models and text-only checkpoints,
# never in place of a checkpoint's own settings.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
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
    """The checkpoint's image-processor settings as a dict, ``{}`` when it has none.

    Read by transformers' own reader, so both layouts work: transformers 5's ``processor_config.json``
    (what ``Processor.save_pretrained`` writes, the image processor nested under ``image_processor``)
    and the older ``preprocessor_config.json``; the nested one wins when both exist, as in transformers.
    """
    try:
        config, _ = ImageProcessingMixin.get_image_processor_dict(str(name_or_path))
    except OSError:
        return {}
    return config


def _class_default(config: dict, name: str) -> object:
    """A setting the config leaves to its image-processor class (``image_processor_type``)'s default."""
    kind = config.get("image_processor_type") or ""
    # The PIL class first (same defaults): touching the torchvision-backed class without torchvision
    # makes transformers print a warning.
    for class_name in (kind + "Pil", kind):
        cls = getattr(transformers, class_name, None) if kind else None
        if cls is not None:
            return getattr(cls, name, None)
    return None


def _size_from_config(config: dict) -> int | tuple[int, int] | None:
    """Final image size of an HF image-processor config (the crop when it centre-crops)."""
    do_crop = config.get("do_center_crop", _class_default(config, "do_center_crop"))
    size = config.get("crop_size", _class_default(config, "crop_size")) if do_crop else None
    size = size if size is not None else config.get("size", _class_default(config, "size"))
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if size.get("height") and size.get("width"):
            return (int(size["height"]), int(size["width"]))
        if size.get("shortest_edge"):
            return int(size["shortest_edge"])
    return None


def image_settings(name_or_path: str | Path, what: str) -> tuple[int | tuple[int, int], tuple, tuple]:
    """``(size, mean, std)`` that the checkpoint's image processor uses (see ``_image_config``).

    A config that turns normalisation off gives mean 0 and std 1. Settings the config leaves out come
    from its ``image_processor_type`` class's defaults, as transformers would fill them in.

    Args:
        what: how to name the checkpoint in errors, e.g. ``"student.pretrained '/models/vilt'"``.

    Raises:
        ConfigError: no image settings in either file, or no size / mean / std in them.
    """
    config = _image_config(name_or_path)
    if not config:
        raise ConfigError(
            f"{what}: no image settings (neither processor_config.json nor preprocessor_config.json); fix: save "
            "the model's processor into that folder (e.g. ViltProcessor.save_pretrained(folder))"
        )
    size = _size_from_config(config)
    if config.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = config.get("image_mean", _class_default(config, "image_mean"))
        std = config.get("image_std", _class_default(config, "image_std"))
    if size is None or mean is None or std is None:
        raise ConfigError(
            f"{what}: its image processor config gives no {'size' if size is None else 'image_mean/image_std'}; "
            "fix: add it there (size {height, width} or {shortest_edge}, image_mean, image_std)"
        )
    return size, tuple(mean), tuple(std)


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The fast tokenizer of a checkpoint; ``ConfigError`` when there is none or it has no vocabulary."""
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
    return tokenizer


def check_batch(examples: Sequence[TaskExample], images: Sequence[Sequence[Image.Image]]) -> tuple[int, int]:
    """``(images, texts)`` per example.

    Raises:
        ValueError: an example whose task or counts differ from the first one's.
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
    return n_images, n_texts


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
        """Tokenizer and image settings of a checkpoint that sees images (hub id or directory).

        Size, mean and std come from its image-processor config (``processor_config.json`` or
        ``preprocessor_config.json``; see :func:`image_settings`); ``image_size`` overrides the size.

        Raises:
            ConfigError: no usable tokenizer, or no image settings (never a silent default).
        """
        tokenizer = load_tokenizer(name_or_path)
        size, mean, std = image_settings(name_or_path, f"{name_or_path}")
        return cls(tokenizer, image_size or size, mean, std, max_length=max_length)

    @classmethod
    def for_text_model(
        cls,
        name_or_path: str | Path,
        *,
        image_size: int | tuple[int, int],
        image_mean: Sequence[float] = DEFAULT_MEAN,
        image_std: Sequence[float] = DEFAULT_STD,
        max_length: int = 40,
    ) -> Processor:
        """The tokenizer of a text checkpoint (no image side) with image settings given by the caller.

        For text teachers (they ignore pixels), tiny random students, and dual students whose image
        tower is another checkpoint or random.
        """
        return cls(load_tokenizer(name_or_path), image_size, image_mean, image_std, max_length=max_length)

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
        n_images, n_texts = check_batch(examples, images)
        pixel_values = self.images_to_tensor([im for ims in images for im in ims])
        input_ids, attention_mask, word_index = self.tokenize([t for ex in examples for t in ex.texts])
        return ModelInputs(pixel_values, input_ids, attention_mask, word_index, n_images, n_texts, examples[0].task)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer and ``preprocessor_config.json`` so ``from_pretrained(directory)`` rebuilds this.

        The image settings are written as a ``ViTImageProcessor`` config (a fixed ``height x width``
        bicubic resize, no crop, scale by 1/255, normalise): exactly what ``__call__`` does, and what
        transformers' ``AutoImageProcessor`` and model processors (``ViltProcessor``, ``CLIPProcessor``)
        load from the folder. transformers' PIL backend gives the same pixels bit for bit. The
        tokenizer's ``model_max_length`` is set to ``max_length``, so ``truncation=True`` cuts texts
        where this processor does.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        tokenizer_config = directory / "tokenizer_config.json"
        if tokenizer_config.is_file():
            settings = json.loads(tokenizer_config.read_text())
            settings["model_max_length"] = self.max_length
            tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
        height, width = self.image_size
        config = {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": height, "width": width},
            "resample": int(Image.Resampling.BICUBIC),
            "do_center_crop": False,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
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
