"""DiDE (arXiv 2112.08723): a dual-encoder student learns a fine-tuned fusion teacher's attention.

Registered as method ``dide`` in :mod:`vldistill.distill.methods`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vldistill.data.loader import Batch
from vldistill.distill.base import Method, register
from vldistill.distill.config import MethodConfig
from vldistill.distill.losses import attention_kl
from vldistill.errors import ConfigError
from vldistill.models.outputs import StudentOutput


@register("dide")
class DistilledDualEncoder(Method):
    """DiDE (arXiv 2112.08723): a dual-encoder student learns a fusion teacher's cross-modal attention.

    Loss: ``attention_weight * (KL_t2i + KL_i2t)`` on the last layer (padded queries and keys masked,
    unlike the reference code) ``+ logit_weight * soft-label loss`` (VQA: BCE on sigmoid scores summed
    over the answers and averaged over the batch, the task loss's scale, as the reference; otherwise
    KL of softmaxes; :meth:`Method.soft_label_loss`). Student and teacher must share tokenizer and
    patch grid so that the attention maps line up position by position; ``vldistill plan`` checks it.
    """

    needs_cross_attention = True
    default_logit_weight = 1.0

    def __init__(
        self, cfg: MethodConfig, teachers: Mapping[str, nn.Module], task: str, answers: Sequence[str] | None = None
    ) -> None:
        super().__init__(cfg, teachers, task, answers)
        fusion = [n for n, t in teachers.items() if getattr(t, "kind", "") == "fusion"]
        if len(fusion) != 1:
            raise ConfigError("method dide needs exactly one teacher of kind fusion; fix: set method.teachers")
        self.teacher_name = fusion[0]

    def setup(self, out: StudentOutput, targets: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        if out.cross_attention is None:
            raise ConfigError("method dide needs a dual-encoder student; fix: set student.kind: dual")
        t = targets[self.teacher_name]
        sp, tp = out.cross_attention.text_to_image.shape[-1], t["t2i"].shape[-1]
        sh, th = out.cross_attention.text_to_image.shape[1], t["t2i"].shape[2]
        self._map_teacher_logits(out, targets)
        if (sp, sh) != (tp, th):
            raise ConfigError(
                f"dide: student last layer has {sh} heads x {sp} image tokens, teacher {th} heads x {tp}; "
                "fix: give the student's towers the teacher's number of heads, image size and patch size"
            )

    def losses(
        self, out: StudentOutput, batch: Batch, targets: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        assert out.cross_attention is not None
        ca = out.cross_attention
        t = targets[self.teacher_name]
        length = ca.text_to_image.shape[2]
        t2i = t["t2i"].flatten(0, 1)[:, :, :length].to(ca.text_to_image.dtype)
        i2t = t["i2t"].flatten(0, 1)[..., :length].to(ca.image_to_text.dtype)
        text_mask = ca.text_mask & t["text_mask"].flatten(0, 1)[:, :length]
        image_mask = ca.image_mask & t["image_mask"].flatten(0, 1)
        terms = {
            "attention/t2i": self.cfg.attention_weight * attention_kl(t2i, ca.text_to_image, text_mask, image_mask),
            "attention/i2t": self.cfg.attention_weight * attention_kl(i2t, ca.image_to_text, image_mask, text_mask),
        }
        if self.logit_weight > 0:
            soft = self.soft_label_loss(self.teacher_name, out.logits, t["logits"])
            terms["logits/soft_labels"] = self.logit_weight * soft
        return terms

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "method": self.name,
            "attention_weight": c.attention_weight,
            "logit_weight": self.logit_weight,
            "temperature": c.temperature,
        }
