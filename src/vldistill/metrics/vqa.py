"""VQA accuracy exactly as the official evaluation (GT-Vision-Lab/VQA ``vqaEval.py``, after "Fixed
processing answers bug", March 2021).

Per question, the official code:

1. replaces newlines and tabs by spaces and strips the result answer and each of the ten gt answers;
2. **only when the gt answers are not all identical**, normalises the gt answers and the result answer
   (:func:`strip_punctuation`, then :func:`normalize_words`); when all ten annotators wrote the same
   string nothing is normalised, so ``"Yes"`` against ten ``"yes"`` scores 0 (the authors' reason: such
   answers are often text read from the image, which normalisation would corrupt);
3. averages, over the ten gt answers held out in turn, ``min(1, matches / 3)`` where ``matches`` counts
   the *other* gt answers equal to the result answer (3 of 10 matching gives 0.9, not 1).

Per-question figures are ``round(100 * acc, 2)``; overall, per question type and per answer type are
``round(100 * sum(accs) / len(accs), 2)`` over the unrounded per-question accuracies, with the
official script's ``round``: it is Python 2 code, and Python 2 rounds the exact binary value half
*away from zero* (Python 3 rounds ties to even), so an overall of exactly 3.125 reads 3.13, as the
official evaluation prints it, not 3.12 (:func:`round2`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from vldistill.errors import DataError
from vldistill.metrics.files import read_json

# The official tables, verbatim (kept compact; the formatter would spread them over 160 lines).
# fmt: off
# Quirks kept: keys with capitals ("Im", "Ive") never match because words are lowercased first, and
# "somebody'd" maps to "somebodyd".
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
# Apostrophe, colon and period are not in the list: periods are handled by _PERIOD_NOT_BEFORE_DIGIT.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
# fmt: on
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a lookahead (not a lookbehind)
# that can never fail in front of a ".", so it removes every period not followed by a digit.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE as re.sub's positional *count*: at most 32 periods go.
_PERIOD_STRIP_COUNT = int(re.UNICODE)
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def clean_whitespace(answer: str) -> str:
    """Newlines and tabs to spaces, then strip: applied to every answer before anything else."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def strip_punctuation(text: str) -> str:
    """The official ``processPunctuation``.

    Each punctuation mark is deleted when it touches a space anywhere in the text (``"red, white"``) or
    when the text has a comma between digits (``"10,000"``), and otherwise replaced by a space
    (``"t-shirt"`` -> ``"t shirt"``). The decisions look at the *input* text. Then periods not followed
    by a digit are deleted (``"yes."`` -> ``"yes"``, ``"3.5"`` kept).
    """
    digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if mark not in text:  # replacing never creates a mark, so an absent one stays absent
            continue
        if digit_comma or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_STRIP_COUNT)


def normalize_words(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, number words to digits, drop articles,
    expand contractions written without apostrophe (``"dont"`` -> ``"don't"``), single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


@lru_cache(maxsize=1 << 16)
def _processed(answer: str) -> str:
    """Punctuation then words: cached, since a split repeats a few thousand answers many times."""
    return normalize_words(strip_punctuation(answer))


def normalize_answer(answer: str) -> str:
    """The official processing of an answer (whitespace, punctuation, digits and articles).

    Use it to build answer vocabularies; scoring applies it only where the official code does.
    """
    return _processed(clean_whitespace(answer))


def _leave_one_out_accuracy(
    candidate: str, answers: Sequence[str], identities: Sequence[object] | None = None
) -> float:
    """Mean over held-out gt entries of ``min(1, matches / 3)``, in [0, 1].

    Holding an entry out removes every entry equal to it, as the official code compares whole answer
    dicts (answer, confidence and id). ``identities`` are the entries' other fields; ``None`` says the
    entries are known to be distinct, so each hold-out removes exactly itself (the fast path).
    """
    if identities is None:
        count = answers.count(candidate)
        accs = [min(1.0, (count - (answer == candidate)) / 3) for answer in answers]
    else:
        entries = list(zip(answers, identities, strict=True))
        accs = [
            min(1.0, sum(1 for other in entries if other != held_out and other[0] == candidate) / 3)
            for held_out in entries
        ]
    return sum(accs) / len(accs)


def answer_scores(answers: Sequence[str]) -> dict[str, float]:
    """Soft training targets: each distinct normalised gt answer -> its official accuracy in [0, 1].

    The accuracy is the leave-one-out score the answer would get against ``answers`` (normally the ten
    annotator answers), all normalised; e.g. an answer given by 3 of 10 annotators scores 0.9.
    Keys are :func:`normalize_answer` outputs, in first-appearance order.
    """
    normalized = [normalize_answer(answer) for answer in answers]
    return {answer: _leave_one_out_accuracy(answer, normalized) for answer in dict.fromkeys(normalized)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def question_accuracy(result_answer: str, gt_answers: Sequence[Mapping[str, Any]]) -> float:
    """The official accuracy of one result answer against a question's gt answer dicts, in [0, 1]."""
    result = clean_whitespace(result_answer)
    cleaned = [clean_whitespace(gt["answer"]) for gt in gt_answers]
    if len(set(cleaned)) > 1:
        cleaned = [_processed(answer) for answer in cleaned]
        result = _processed(result)
    answer_ids = [gt.get("answer_id") for gt in gt_answers]
    if all(_is_int(answer_id) for answer_id in answer_ids) and len(set(answer_ids)) == len(answer_ids):
        return _leave_one_out_accuracy(result, cleaned)  # distinct ids: distinct dicts
    identities = [{key: value for key, value in gt.items() if key != "answer"} for gt in gt_answers]
    return _leave_one_out_accuracy(result, cleaned, identities)


def round2(value: float) -> float:
    """Python 2's ``round(value, 2)``: the exact binary value rounded half away from zero.

    >>> round2(3.125), round(3.125, 2)
    (3.13, 3.12)
    >>> round2(2.675)  # 2.675 is stored as 2.67499999..., so no tie
    2.67
    """
    return float(Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _percent(accs: Sequence[float]) -> float:
    return round2(100 * sum(accs) / len(accs))


def _index_annotations(annotations: object, path: str) -> dict[int, Mapping[str, Any]]:
    """question_id -> annotation, checking what the evaluation reads."""
    fix = "use the official v2_mscoco_<split>_annotations.json"
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise DataError(path, None, "not an object with an 'annotations' list", fix)
    if not annotations["annotations"]:
        raise DataError(path, None, "the 'annotations' list is empty", fix)
    index: dict[int, Mapping[str, Any]] = {}
    for position, ann in enumerate(annotations["annotations"]):
        qid = ann.get("question_id") if isinstance(ann, dict) else None
        where = f"annotations[{position}]" + (f" (question_id {qid})" if qid is not None else "")
        if not isinstance(ann, dict) or not _is_int(qid):
            raise DataError(path, where, "missing or non-integer 'question_id'", fix)
        if qid in index:
            raise DataError(path, where, "duplicate question_id", "keep one annotation per question")
        for key in ("question_type", "answer_type"):
            if not isinstance(ann.get(key), str):
                raise DataError(path, where, f"missing or non-string '{key}'", fix)
        answers = ann.get("answers")
        if not isinstance(answers, list) or not answers:
            raise DataError(path, where, "'answers' is not a non-empty list", fix)
        if not all(isinstance(gt, dict) and isinstance(gt.get("answer"), str) for gt in answers):
            raise DataError(path, where, "an entry of 'answers' lacks a string 'answer'", fix)
        index[qid] = ann
    return index


def _check_questions(questions: object, annotated: Mapping[int, object], path: str, ann_path: str) -> None:
    """The questions file must list every annotated question (the official API joins the two files)."""
    fix = "use the official v2_OpenEnded_mscoco_<split>_questions.json"
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise DataError(path, None, "not an object with a 'questions' list", fix)
    ids = set()
    for position, question in enumerate(questions["questions"]):
        qid = question.get("question_id") if isinstance(question, dict) else None
        if not _is_int(qid):
            raise DataError(path, f"questions[{position}]", "missing or non-integer 'question_id'", fix)
        ids.add(qid)
    missing = [qid for qid in annotated if qid not in ids]
    if missing:
        raise DataError(
            ann_path,
            f"question_id {missing[0]}",
            f"{len(missing)} annotated question(s) not in the questions file {path}",
            "pass the questions and annotations files of the same split",
        )


def _index_results(
    results: object, annotated: Mapping[int, object], path: str, subset: bool = False
) -> dict[int, str]:
    """question_id -> result answer; the results must answer every annotated question exactly once."""
    fix = 'write a JSON list of {"question_id": <int>, "answer": <str>}, one per question'
    if not isinstance(results, list):
        raise DataError(path, None, f"results must be a JSON list, got {type(results).__name__}", fix)
    index: dict[int, str] = {}
    first_at: dict[int, int] = {}
    for position, record in enumerate(results):
        qid = record.get("question_id") if isinstance(record, dict) else None
        where = f"results[{position}]" + (f" (question_id {qid!r})" if qid is not None else "")
        if not isinstance(record, dict) or "question_id" not in record or "answer" not in record:
            raise DataError(path, where, "not an object with 'question_id' and 'answer'", fix)
        if not _is_int(qid):
            raise DataError(path, where, "'question_id' is not an integer", fix)
        if not isinstance(record["answer"], str):
            raise DataError(path, where, f"'answer' is {type(record['answer']).__name__}, not a string", fix)
        if qid in first_at:
            problem = f"duplicate question_id, first at results[{first_at[qid]}]"
            raise DataError(path, where, problem, "keep one answer per question")
        if qid not in annotated:
            problem = "question_id not in the annotated questions"
            raise DataError(path, where, problem, "score the split that the results answer")
        first_at[qid] = position
        index[qid] = record["answer"]
    missing = [qid for qid in annotated if qid not in index]
    if subset and not index:
        raise DataError(path, None, "no answers", "answer at least one question of the split")
    if missing and not subset:
        raise DataError(
            path,
            f"question_id {missing[0]}",
            f"no answer for {len(missing)} of {len(annotated)} questions",
            "answer every question of the split (the official evaluation requires all of them), or add "
            "--subset to score only the answered ones",
        )
    return index


def evaluate_vqa(
    questions: dict,
    annotations: dict,
    results: list[dict],
    *,
    questions_path: str | Path | None = None,
    annotations_path: str | Path | None = None,
    results_path: str | Path | None = None,
    subset: bool = False,
) -> dict:
    """Score official VQA results against the official questions and annotations (parsed JSON objects).

    Every annotated question is scored and must be answered exactly once (as the official
    evaluation requires); with ``subset`` only the answered questions are scored (predictions of part
    of a split: not the split's official score) and ``"subset": {"scored": n, "annotated": N}`` is
    added. The paths only name files in errors. Returns, in percent rounded to 2 decimals::

        {"accuracy": {"overall": x, "perQuestionType": {type: x}, "perAnswerType": {type: x}},
         "per_question": {"<question_id>": x}}
    """
    q_path = str(questions_path or "<questions>")
    a_path = str(annotations_path or "<annotations>")
    r_path = str(results_path or "<results>")
    annotated = _index_annotations(annotations, a_path)
    _check_questions(questions, annotated, q_path, a_path)
    answers = _index_results(results, annotated, r_path, subset)
    total = len(annotated)
    if subset:
        annotated = {qid: ann for qid, ann in annotated.items() if qid in answers}

    accs = {qid: question_accuracy(answers[qid], ann["answers"]) for qid, ann in annotated.items()}
    types = [(ann["question_type"], ann["answer_type"]) for ann in annotated.values()]
    scores = {
        "accuracy": accuracy_by_type(list(accs.values()), types),
        "per_question": {str(qid): round2(100 * acc) for qid, acc in accs.items()},
    }
    if subset:
        scores["subset"] = {"scored": len(accs), "annotated": total}
    return scores


def accuracy_by_type(accs: Sequence[float], types: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The official summary of per-question accuracies in [0, 1], each with its ``(question_type, answer_type)``.

    ``{"overall": x, "perQuestionType": {type: x}, "perAnswerType": {type: x}}`` in percent, each the
    mean of the unrounded accuracies of its questions rounded by :func:`round2`, types in order of first
    appearance (``vqaEval.py``'s ``setAccuracy``).
    """
    by_question_type: dict[str, list[float]] = {}
    by_answer_type: dict[str, list[float]] = {}
    for acc, (question_type, answer_type) in zip(accs, types, strict=True):
        by_question_type.setdefault(question_type, []).append(acc)
        by_answer_type.setdefault(answer_type, []).append(acc)
    return {
        "overall": _percent(accs),
        "perQuestionType": {name: _percent(group) for name, group in by_question_type.items()},
        "perAnswerType": {name: _percent(group) for name, group in by_answer_type.items()},
    }


def load_and_evaluate(
    questions_path: str | Path, annotations_path: str | Path, results_path: str | Path, *, subset: bool = False
) -> dict:
    """Read the three official JSON files and :func:`evaluate_vqa` them (``subset``: see there)."""
    return evaluate_vqa(
        read_json(questions_path, "questions"),
        read_json(annotations_path, "annotations"),
        read_json(results_path, "results"),
        questions_path=questions_path,
        annotations_path=annotations_path,
        results_path=results_path,
        subset=subset,
    )
