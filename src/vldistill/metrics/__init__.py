"""Official metrics: VQA accuracy (the official evaluation, quirks included), SNLI-VE accuracy,
VCR Q->A / QA->R / Q->AR, NLVR2 accuracy and consistency. Pure functions plus file loaders."""

from vldistill.metrics.classification import load_snli_ve_predictions, snli_ve_accuracy
from vldistill.metrics.nlvr2 import load_nlvr2_predictions, nlvr2_scores
from vldistill.metrics.vcr import load_vcr_predictions, vcr_accuracy
from vldistill.metrics.vqa import answer_scores, evaluate_vqa, load_and_evaluate, normalize_answer

__all__ = [
    "answer_scores",
    "evaluate_vqa",
    "load_and_evaluate",
    "load_nlvr2_predictions",
    "load_snli_ve_predictions",
    "load_vcr_predictions",
    "nlvr2_scores",
    "normalize_answer",
    "snli_ve_accuracy",
    "vcr_accuracy",
]
