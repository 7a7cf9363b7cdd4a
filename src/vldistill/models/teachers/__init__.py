"""Frozen teachers: CLIP (both towers and zero-shot scores), image backbones, text encoders, ViLT.

Every teacher is an ``nn.Module`` that stays in eval mode with no gradients, owns the ``processor``
that makes its inputs, and has a ``fingerprint()`` that keys the teacher cache. ``build_teacher``
turns a ``TeacherConfig`` into one.
"""

from vldistill.models.teachers.base import Teacher
from vldistill.models.teachers.clip import CandidateTexts, CLIPTeacher, CLIPTeacherOutput, small_clip_config
from vldistill.models.teachers.factory import TeacherConfig, TinyTeacherConfig, build_teacher
from vldistill.models.teachers.fusion import FusionTeacher
from vldistill.models.teachers.text import TextTeacher, mean_pool, minilm_path, minilm_tokenizer
from vldistill.models.teachers.vision import VisionTeacher

__all__ = [
    "CLIPTeacher",
    "CLIPTeacherOutput",
    "CandidateTexts",
    "FusionTeacher",
    "Teacher",
    "TeacherConfig",
    "TextTeacher",
    "TinyTeacherConfig",
    "VisionTeacher",
    "build_teacher",
    "mean_pool",
    "minilm_path",
    "minilm_tokenizer",
    "small_clip_config",
]
