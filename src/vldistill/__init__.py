"""vldistill: knowledge distillation for vision-language models (CLIP-TD, MAD, DiDE)."""

__version__ = "0.1.0"
