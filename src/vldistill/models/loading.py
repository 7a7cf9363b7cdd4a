"""Finding and checking a user's checkpoint: one clear line when it cannot be used, never a silent default.

Shared by students and teachers:

- :func:`resolve_pretrained`: a ``pretrained`` value is a local folder or a Hugging Face hub id. A hub id
  that is neither in the local cache nor reachable is a ``ConfigError`` naming the config key, raised
  before transformers starts: left to itself, huggingface_hub retries a failed request five times with
  back-off (10-30 s) and transformers then prints the whole exception chain (about 100 lines).
- :func:`checkpoint_model_type`: the ``model_type`` a checkpoint's ``config.json`` declares, so that a
  BERT folder given as a ViLT student is refused by name instead of loading as a random ViLT.
- :func:`check_loaded_weights`: weights the architecture needs that the checkpoint lacks (transformers
  initialises them at random and only logs it) are an error, except the parts a fine-tuning run creates
  anew (a task head on a pre-trained backbone). Weights of the checkpoint that the model does not use
  (e.g. the MLM and ITM heads of a pre-trained ViLT) are dropped, as transformers does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers import PretrainedConfig

from vldistill.errors import ConfigError

CONFIG_NAME = "config.json"
SHOWN = 3
"""How many offending weight names an error lists."""


def _local_fix(key: str) -> str:
    return f"--set {key}=/local/dir (a folder holding the checkpoint)"


def _is_hub_id(name: str) -> bool:
    if name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_pretrained(name: str, key: str) -> str:
    """``name`` if it is a local folder or a hub id that can be loaded; else a ``ConfigError`` naming ``key``.

    A hub id is usable when its ``config.json`` is in the local Hugging Face cache, or, outside offline
    mode (``HF_HUB_OFFLINE=1``), when one request for that file's metadata succeeds. That single request
    (``huggingface_hub.get_hf_file_metadata``, no retries, ``HF_HUB_ETAG_TIMEOUT`` seconds at most) is
    the only network access; in offline mode there is none.

    Args:
        name: the config value (a folder path or ``owner/name``).
        key: the config key it came from, e.g. ``"student.pretrained"``; named in every error.

    Raises:
        ConfigError: no such folder; a hub id not cached while offline; a hub id the hub does not know
            (or that needs a login); a hub that cannot be reached.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or not _is_hub_id(name):
        raise ConfigError(f"{key} '{name}' is not a folder (nor a hub id); fix: {_local_fix(key)}")
    if isinstance(huggingface_hub.try_to_load_from_cache(name, CONFIG_NAME), str):
        return name
    if hub_constants.is_offline_mode():
        raise ConfigError(
            f"{key} '{name}' is not a local folder, and this hub id is not in the Hugging Face cache while "
            f"offline mode (HF_HUB_OFFLINE) is on; fix: {_local_fix(key)}, or download it where the hub is reachable"
        )
    url = huggingface_hub.hf_hub_url(name, CONFIG_NAME)
    try:
        huggingface_hub.get_hf_file_metadata(url, timeout=hub_constants.HF_HUB_ETAG_TIMEOUT)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise ConfigError(
            f"{key} '{name}' is not a local folder, and the Hugging Face hub has no model of that id that this "
            f"login may read ({type(err).__name__}); fix: correct the id, log in (hf auth login), or {_local_fix(key)}"
        ) from err
    except Exception as err:  # connection, proxy, TLS or timeout errors: a single attempt, no retries
        raise ConfigError(
            f"{key} '{name}' is not a local folder, is not in the Hugging Face cache, and the hub cannot be reached "
            f"({type(err).__name__}); fix: {_local_fix(key)}"
        ) from err
    return name


def checkpoint_model_type(name: str, key: str) -> str | None:
    """The ``model_type`` in the ``config.json`` of ``name`` (a folder or a resolved hub id).

    Raises:
        ConfigError: ``name`` has no readable ``config.json``.
    """
    fix = "give a folder written by save_pretrained (transformers) or by vldistill"
    try:
        config, _ = PretrainedConfig.get_config_dict(name)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key} '{name}' has no readable {CONFIG_NAME} ({err}); fix: {fix}") from err
    if not config:  # transformers 5 returns {} for a folder without one
        raise ConfigError(f"{key} '{name}' has no readable {CONFIG_NAME}; fix: {fix}")
    return config.get("model_type")


def check_loaded_weights(
    info: Mapping[str, Any], name: str, what: str, *, new_ok: tuple[str, ...] = (), fix: str
) -> None:
    """Refuse a load that left weights at their random initialisation.

    Args:
        info: transformers' loading info (``from_pretrained(..., output_loading_info=True)``):
            ``missing_keys`` and ``mismatched_keys`` (``(name, checkpoint shape, model shape)``, when
            loaded with ``ignore_mismatched_sizes``).
        name: the checkpoint, for the message.
        what: who loads it, e.g. ``"student.pretrained"`` or ``"CLIP teacher"``.
        new_ok: prefixes of parameter names that may start anew (a task head the checkpoint lacks or
            holds with another number of labels).
        fix: what the user should do, for the message.

    Raises:
        ConfigError: listing how many weights are missing or of another shape, and the first few.
    """
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(new_ok))
    mismatched = sorted(k[0] for k in info.get("mismatched_keys", ()) if not k[0].startswith(new_ok))
    if not missing and not mismatched:
        return
    parts = []
    if missing:
        parts.append(
            f"lacks {len(missing)} weights ({', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''})"
        )
    if mismatched:
        shown = ", ".join(mismatched[:SHOWN]) + (", ..." if len(mismatched) > SHOWN else "")
        parts.append(f"holds {len(mismatched)} weights of another shape ({shown})")
    raise ConfigError(f"{what} '{name}' {' and '.join(parts)}, which would start random; fix: {fix}")
