"""The text-only prior: a student that reads the question (or hypothesis, or candidate) but never the image.

What it is for. A vision-language score means little until it is set against what the text alone gives:
VQA v2 was rebalanced because a question-only model already answered much of VQA v1 (Goyal et al.,
CVPR 2017, "Making the V in VQA Matter", their "d-LSTM Q" question-only baseline; Antol et al., ICCV
2015, "BoW Q"), and natural-language inference has its hypothesis-only baselines (Gururangan et al.,
NAACL 2018; Poliak et al., *SEM 2018). This student is that standard question-only control, the
*language prior*: trained on the same subset, with the same loss, engine and dev selection as every
other student (``student.kind: prior``, ``method.name: none``), it is the score a model reaches
without looking; a student that does not beat it has learned nothing from the image.

The model is fastText's (Joulin et al., EACL 2017, "Bag of Tricks for Efficient Text Classification"):
hashed unigrams and bigrams of the token ids, their embeddings averaged (``nn.EmbeddingBag``, mode
mean), then the same task head as the other students (``vldistill.models.heads``). It reads the
token ids of the student processor (``student_processor``), so a prior built beside a ViLT student
sees that student's WordPiece tokens. Per task:

=========  =========================================  ==========================================
task       text it reads                              logits
=========  =========================================  ==========================================
vqa        the question                               the answer vocabulary (MLP head)
snli_ve    the hypothesis                             3 classes (MLP head)
vcr        each candidate text (question + answer)    one score per candidate (linear head)
nlvr2      the statement (both views read the same)   2 classes (MLP head on both views)
=========  =========================================  ==========================================
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init

from vldistill.data.examples import view_index
from vldistill.models.fusion import task_config_kwargs
from vldistill.models.heads import build_head, head_logits
from vldistill.models.outputs import ModelInputs, StudentOutput

PADDING_BUCKET = 0
"""The bucket of padding positions: its embedding is zero and left out of the mean (``padding_idx``)."""
_MINSTD_MODULUS = 2**31 - 1  # the Park-Miller "minimal standard" generator: x -> 48271 x mod (2^31 - 1)
_MINSTD_MULTIPLIER = 48271
_BIGRAM_BASE = 2**20  # unigram keys are token ids (< 2^20); bigram keys start above them


@strict
class TextPriorConfig(PreTrainedConfig):
    """Config of a ``TextPriorStudent``: the task, its labels, the bucket count and the embedding width."""

    model_type = "vldistill-text-prior"
    task: str = "vqa"
    buckets: int = 65536
    hidden_size: int = 64
    initializer_range: float = 0.02


def ngram_buckets(input_ids: torch.Tensor, attention_mask: torch.Tensor, buckets: int) -> torch.Tensor:
    """The hashed unigrams and bigrams of each text: ``(N, L)`` ids -> ``(N, 2L - 1)`` bucket indices.

    Columns ``0 .. L-1`` are the unigrams (token ``t``), columns ``L .. 2L-2`` the bigrams (tokens
    ``t, t+1``); special tokens count as tokens (``[CLS] what`` marks the first word). A position whose
    token (or either token of the bigram) is padding gets ``PADDING_BUCKET``. The hash: key ``k`` = the
    token id for a unigram, ``(a + 1) * 2^20 + b`` for the bigram ``a b``; bucket
    ``1 + (48271 * (k mod (2^31 - 1)) mod (2^31 - 1)) mod (buckets - 1)`` (one step of the Park-Miller
    generator, exact in int64), so buckets ``1 .. buckets - 1`` hold n-grams and the same ids give the
    same buckets on every machine (Python's ``hash`` would not).

    >>> ngram_buckets(torch.tensor([[101, 7, 102, 0]]), torch.tensor([[1, 1, 1, 0]]), 1000).tolist()
    [[252, 236, 571, 0, 49, 475, 0]]
    """
    if buckets < 2:
        raise ValueError(f"buckets must be at least 2 (one for padding), got {buckets}")
    ids, real = input_ids.long(), attention_mask.bool()
    unigram_keys = ids
    bigram_keys = (ids[:, :-1] + 1) * _BIGRAM_BASE + ids[:, 1:]
    keys = torch.cat([unigram_keys, bigram_keys], dim=1)
    hashed = (keys % _MINSTD_MODULUS) * _MINSTD_MULTIPLIER % _MINSTD_MODULUS
    out = 1 + hashed % (buckets - 1)
    present = torch.cat([real, real[:, :-1] & real[:, 1:]], dim=1)
    return out.masked_fill(~present, PADDING_BUCKET)


class TextPriorStudent(PreTrainedModel):
    """Hashed n-gram embeddings of the text -> mean -> LayerNorm -> task head; ``forward(inputs) -> StudentOutput``.

    The image is never read (``inputs.pixel_values`` only gives the batch size). The ``StudentOutput``
    fields it can fill: ``logits``; ``pooled`` ``(B * V, D)`` (the normalised mean of each view's text
    n-grams; NLVR2's two views read the same statement); ``text_tokens`` ``(B * V, L, D)`` (each
    token's unigram embedding), ``text_mask`` and ``text_word_index``. Those it cannot: ``image_tokens``
    is empty ``(B * V, 0, D)``, ``image_mask`` ``(B * V, 0)``, ``image_grid`` ``(0, 0)``; ``cls_attention``,
    ``cross_attention`` and the per-layer ``*_hidden_states`` are None. No distillation method applies
    to it (a ``ConfigError`` at config time: ``vldistill.config``).

    Saved by ``save_student`` as a Hugging Face directory; ``TextPriorStudent.from_pretrained(folder)``
    loads it, with ``Processor.from_pretrained(folder)`` for its inputs.
    """

    config_class = TextPriorConfig
    config: TextPriorConfig
    base_model_prefix = "prior"
    input_modalities = ("text",)

    def __init__(self, config: TextPriorConfig) -> None:
        super().__init__(config)
        self.ngrams = nn.EmbeddingBag(config.buckets, config.hidden_size, mode="mean", padding_idx=PADDING_BUCKET)
        # BERT's epsilon: the mean of small initial embeddings has a variance near LayerNorm's default 1e-5.
        self.norm = nn.LayerNorm(config.hidden_size, eps=1e-12)
        self.head = build_head(config.task, config.hidden_size, config.num_labels)
        self.post_init()

    @classmethod
    def for_task(
        cls,
        task: str,
        num_labels: int,
        answers: list[str] | None = None,
        *,
        buckets: int = 65536,
        hidden_size: int = 64,
    ) -> TextPriorStudent:
        """A randomly initialised prior for ``task`` (``answers``: the vqa answer vocabulary)."""
        kwargs = task_config_kwargs(task, num_labels, answers)
        kwargs.pop("num_images", None)
        return cls(TextPriorConfig(task=task, buckets=buckets, hidden_size=hidden_size, **kwargs))

    @property
    def task(self) -> str:
        return self.config.task

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, ``initializer_range``) n-gram embeddings, padding row zero; every other module as transformers
        does. Small, so that n-grams never seen in training add little to a text's mean (with N(0, 1), the
        embeddings of unseen bigrams drowned the one informative word of a held-out question)."""
        if isinstance(module, nn.EmbeddingBag):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[PADDING_BUCKET])
            return
        super()._init_weights(module)

    def forward(self, inputs: ModelInputs, output_cross_attention: bool = False) -> StudentOutput:
        """Logits ``(B, C)`` from the texts alone; see the class docstring for the other fields.

        Raises:
            ValueError: ``output_cross_attention`` (there is no image to attend to).
        """
        if output_cross_attention:
            raise ValueError("the text-only prior has no cross-modal attention (it reads no image)")
        batch = inputs.batch_size
        _, txt_idx = view_index(inputs.task, batch, inputs.n_images, inputs.n_texts)
        txt_idx = txt_idx.to(inputs.input_ids.device)
        bags = ngram_buckets(inputs.input_ids, inputs.attention_mask, self.config.buckets)
        pooled = self.norm(self.ngrams(bags))[txt_idx]
        length = inputs.input_ids.shape[1]
        text_tokens = self.ngrams.weight[bags[:, :length]][txt_idx]
        views = pooled.shape[0]
        return StudentOutput(
            logits=head_logits(self.task, self.head, pooled, batch),
            text_tokens=text_tokens,
            text_mask=inputs.attention_mask[txt_idx].bool(),
            text_word_index=inputs.word_index[txt_idx],
            image_tokens=pooled.new_zeros(views, 0, pooled.shape[1]),
            image_mask=torch.zeros(views, 0, dtype=torch.bool, device=pooled.device),
            image_grid=(0, 0),
            pooled=pooled,
        )
