"""From records to task-agnostic examples: labels, VQA soft scores, VCR texts, zero-shot candidates.

Choices the papers leave open, documented here and switchable where it matters:
- VQA targets are the official per-answer accuracies (leave-one-out ``min(1, matches/3)``) of every
  answer in the vocabulary, as ViLT and DiDE train with BCE on soft scores.
- The answer vocabulary is every normalized answer seen at least ``min_count`` times in the training
  annotations (ViLT keeps 3,129 answers of VQA v2 this way).
- Zero-shot candidates (the confidence weight of CLIP-TD / MAD): VQA scores ``"<question> <answer>"``
  for the gold answer and the most frequent answers of the question's answer type; SNLI-VE scores the
  hypothesis under the three label prompts; VCR scores its four choices; NLVR2 the statement and its
  negation.
- VCR object references become the object's name and index (``[0]`` with objects ``["circle"]`` ->
  ``circle0``), as R2C and ViLT-style VCR models name the detections.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from vldistill.data.examples import TaskExample
from vldistill.data.records import (
    VE_LABELS,
    NLVR2Record,
    Record,
    SNLIVERecord,
    VCRRecord,
    VCRToken,
    VQARecord,
)

VE_PROMPTS: tuple[str, str, str] = ("{}", "perhaps {}", "it is not true that {}")
"""Default zero-shot prompts of the three SNLI-VE labels, in ``VE_LABELS`` order (``data.ve_prompts``)."""
VQA_PROMPT = "{question} {answer}"
"""Default zero-shot VQA candidate text (``data.vqa_prompt``): CLIP-TD scores question and answer together."""


def build_answer_vocab(records: Sequence[VQARecord], min_count: int = 1) -> list[str]:
    """Normalized answers that occur at least ``min_count`` times, most frequent first (ties: alphabetical)."""
    from vldistill.metrics.vqa import normalize_answer

    counts = Counter(normalize_answer(a.answer) for r in records for a in r.answers)
    kept = [a for a, c in counts.items() if c >= min_count and a]
    return sorted(kept, key=lambda a: (-counts[a], a))


def _answers_by_type(records: Sequence[VQARecord], vocab: Sequence[str]) -> dict[str, list[str]]:
    from vldistill.metrics.vqa import normalize_answer

    in_vocab = set(vocab)
    by_type: dict[str, Counter[str]] = {}
    for r in records:
        for a in r.answers:
            ans = normalize_answer(a.answer)
            if ans in in_vocab:
                by_type.setdefault(r.answer_type, Counter())[ans] += 1
    return {t: [a for a, _ in sorted(c.items(), key=lambda x: (-x[1], x[0]))] for t, c in by_type.items()}


def vcr_text(tokens: Sequence[VCRToken], objects: Sequence[str]) -> str:
    """Render a VCR token list as text, naming each referenced object.

    >>> vcr_text(["Is", [0, 1], "red", "?"], ["circle", "square"])
    'Is circle0 and square1 red ?'
    """
    words: list[str] = []
    for tok in tokens:
        if isinstance(tok, list):
            words.append(" and ".join(f"{objects[i]}{i}" for i in tok))
        else:
            words.append(tok)
    return " ".join(words)


class ExampleBuilder:
    """Turns records of one task into ``TaskExample``s; holds what training taught it (VQA vocab).

    Build it on the training records, then apply it to every split, so evaluation uses the training
    vocabulary and candidates.
    """

    def __init__(
        self,
        task: str,
        train_records: Sequence[Record],
        *,
        min_answer_count: int = 1,
        max_candidates: int = 16,
        ve_prompts: Sequence[str] = VE_PROMPTS,
        vqa_prompt: str = VQA_PROMPT,
    ) -> None:
        self.task = task
        self.max_candidates = max_candidates
        self.ve_prompts = tuple(ve_prompts)
        self.vqa_prompt = vqa_prompt
        self.answers: list[str] = []
        self._by_type: dict[str, list[str]] = {}
        self._answer_set: frozenset[str] = frozenset()
        if task == "vqa":
            vqa = [r for r in train_records if isinstance(r, VQARecord)]
            self.answers = build_answer_vocab(vqa, min_answer_count)
            self._by_type = _answers_by_type(vqa, self.answers)
            self._answer_set = frozenset(self.answers)
            self._answer_index = {a: i for i, a in enumerate(self.answers)}

    @property
    def num_labels(self) -> int:
        return {"vqa": len(self.answers), "snli_ve": 3, "vcr": 4, "nlvr2": 2}[self.task]

    def __call__(self, records: Sequence[Record]) -> list[TaskExample]:
        out: list[TaskExample] = []
        for r in records:
            out.extend(self.convert(r))
        return out

    def convert(self, record: Record) -> list[TaskExample]:
        if isinstance(record, VQARecord):
            return [self._vqa(record)]
        if isinstance(record, SNLIVERecord):
            return [self._snli_ve(record)]
        if isinstance(record, VCRRecord):
            return self._vcr(record)
        if isinstance(record, NLVR2Record):
            return [self._nlvr2(record)]
        raise TypeError(f"unknown record type {type(record).__name__}")

    def _vqa(self, r: VQARecord) -> TaskExample:
        from vldistill.metrics.vqa import answer_scores

        scores = answer_scores([a.answer for a in r.answers]) if r.answers else {}
        in_vocab = {a: s for a, s in scores.items() if a in self._answer_set and s > 0}
        gold = max(in_vocab, key=lambda a: (in_vocab[a], a)) if in_vocab else ""
        pool = [a for a in self._by_type.get(r.answer_type, self.answers) if a != gold]
        cands = ([gold] if gold else []) + pool[: self.max_candidates - (1 if gold else 0)]
        cands = sorted(cands)  # the gold's position must not be a constant
        return TaskExample(
            uid=str(r.question_id),
            task="vqa",
            images=(r.image_path,),
            texts=(r.question,),
            label=self._answer_index[gold] if gold else -1,
            soft_label=in_vocab,
            candidates=tuple(self.vqa_prompt.format(question=r.question, answer=a) for a in cands),
            gold_candidate=cands.index(gold) if gold else -1,
            group=gold,
            meta={"record": str(r.question_id), "answer_type": r.answer_type, "question_type": r.question_type},
        )

    def _snli_ve(self, r: SNLIVERecord) -> TaskExample:
        label = VE_LABELS.index(r.gold_label) if r.gold_label in VE_LABELS else -1
        return TaskExample(
            uid=r.pair_id,
            task="snli_ve",
            images=(r.image_path,),
            texts=(r.hypothesis,),
            label=label,
            candidates=tuple(p.format(r.hypothesis) for p in self.ve_prompts),
            gold_candidate=label,
            group=r.gold_label,
            meta={"record": r.pair_id},
        )

    def _vcr(self, r: VCRRecord) -> list[TaskExample]:
        question = vcr_text(r.question, r.objects)
        answers = [vcr_text(a, r.objects) for a in r.answer_choices]
        qa_texts = tuple(f"{question} {a}" for a in answers)
        a_label = -1 if r.answer_label is None else r.answer_label
        r_label = -1 if r.rationale_label is None else r.rationale_label
        # QA->R conditions on the gold answer (the VCR protocol); on test it is unknown.
        gold_answer = answers[a_label] if a_label >= 0 else ""
        qar_texts = tuple(f"{question} {gold_answer} {vcr_text(c, r.objects)}" for c in r.rationale_choices)
        common = {"record": r.annot_id}
        return [
            TaskExample(
                uid=f"{r.annot_id}/qa",
                task="vcr",
                images=(r.image_path,),
                texts=qa_texts,
                label=a_label,
                candidates=qa_texts,
                gold_candidate=a_label,
                group=str(a_label),
                meta={**common, "stage": "qa"},
            ),
            TaskExample(
                uid=f"{r.annot_id}/qar",
                task="vcr",
                images=(r.image_path,),
                texts=qar_texts,
                label=r_label,
                candidates=qar_texts,
                gold_candidate=r_label,
                group=str(r_label),
                meta={**common, "stage": "qar"},
            ),
        ]

    def _nlvr2(self, r: NLVR2Record) -> TaskExample:
        label = -1 if r.label is None else int(r.label)
        return TaskExample(
            uid=r.identifier,
            task="nlvr2",
            images=(r.left_image, r.right_image),
            texts=(r.sentence,),
            label=label,
            candidates=(f"it is not true that {r.sentence}", r.sentence),
            gold_candidate=label,
            group=str(r.label),
            meta={"record": r.identifier},
        )
