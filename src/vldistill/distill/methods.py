"""Distillation methods, built by name: ``none``, ``kd``, ``clip_td``, ``mad``, ``dide``.

The registry and the base class are in :mod:`vldistill.distill.base`; the feature methods ``kd``,
``clip_td`` and ``mad`` in :mod:`vldistill.distill.features`, DiDE in :mod:`vldistill.distill.dide`.
Importing this module imports them, which registers them; those modules import only
:mod:`~vldistill.distill.base`, so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from vldistill.distill import dide as _dide  # noqa: F401  (registers "dide")
from vldistill.distill import features as _features  # noqa: F401  (registers "kd", "clip_td", "mad")
from vldistill.distill.base import REGISTRY, Method, register
from vldistill.distill.config import MethodConfig
from vldistill.errors import ConfigError

__all__ = ["REGISTRY", "Method", "build_method", "register"]


def build_method(
    cfg: MethodConfig, teachers: Mapping[str, nn.Module], task: str, answers: Sequence[str] | None = None
) -> Method:
    """The registered method named by ``cfg.name`` (``answers``: the student's VQA answer vocabulary)."""
    try:
        cls = REGISTRY[cfg.name]
    except KeyError:
        raise ConfigError(f"unknown method '{cfg.name}'; fix: use one of {', '.join(sorted(REGISTRY))}") from None
    return cls(cfg, teachers, task, answers)
