"""The model card of a training run's student: ``RUN/final/README.md``, written from the run itself.

A Hugging Face model card (https://huggingface.co/docs/hub/model-cards): a YAML metadata header
(``library_name``, ``tags``, ``datasets``, ``metrics`` and a ``model-index`` with the evaluation
results, built with ``huggingface_hub.ModelCardData``), then what the student is and where it came
from: the task and its data (splits, the training subset and its manifest), the method, its switches
as applied and its teachers with their fingerprints (the key of the teacher cache), the scores beside
their image-shuffle controls (:func:`vldistill.training.evaluate.image_shuffled`), the command and
the resolved config that made it, and how to load it with transformers.

The text-only prior is a separate run (a protocol's ``prior`` entry): a single run does not know it, and
its card says so rather than leave the comparison out silently.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

from vldistill.config import ExperimentConfig
from vldistill.models.students import loading_instructions
from vldistill.training.evaluate import PRIMARY_METRIC, SHUFFLED

DATASETS = {"vqa": "VQA v2", "snli_ve": "SNLI-VE", "vcr": "VCR", "nlvr2": "NLVR2"}
"""The dataset each task's official files come from (its name in the papers)."""
TASK_TYPES = {
    "vqa": "visual-question-answering",
    "snli_ve": "visual-entailment",
    "vcr": "visual-commonsense-reasoning",
    "nlvr2": "visual-reasoning",
}
"""``model-index`` task types: the Hub's own for VQA, descriptive names for the others (the Hub has none)."""
STUDENTS = {"fusion": "a fusion encoder (ViLT)", "dual": "a dual encoder (DiDE)", "prior": "a text-only prior"}
METHODS = {
    "none": "the task loss alone (the baseline)",
    "kd": "naive knowledge distillation (all tokens, constant weight)",
    "clip_td": "CLIP-TD (arXiv 2201.05729)",
    "mad": "MAD (arXiv 2204.10496)",
    "dide": "DiDE (arXiv 2112.08723)",
}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process, as a user would type it (default ``sys.argv``).

    ``.../bin/vldistill train ...`` -> ``vldistill train ...``; ``python -m vldistill`` stays so.
    """
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else "python"
    if program == "__main__.py" and Path(argv[0]).parent.name == "vldistill":
        program = "python -m vldistill"
    return " ".join([program, *map(shlex.quote, argv[1:])])


def _versions() -> str:
    found = []
    for package in ("vldistill", "torch", "transformers", "accelerate"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (not installed as a package)")
    return ", ".join(found)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source(pretrained: str | None, fallback: str) -> str:
    return f"`{pretrained}`" if pretrained else fallback


_LAYOUT_NAMES = {
    "official": "official file format",
    "vilt_arrow": "ViLT's Arrow layout",
    "hf_datasets": "Hugging Face datasets split",
}


def _layout_name(d: Any) -> str:
    """How the training split's files are laid out (``data.format``, or what ``auto`` finds there)."""
    from vldistill.data.readers.layout import resolve_format

    try:
        fmt = resolve_format(d.task, Path(d.root).expanduser(), d.splits()[0], d.layout())
    except Exception:  # noqa: BLE001  (the card is written after training: a moved root must not fail it)
        fmt = d.format
    return _LAYOUT_NAMES.get(fmt, f"data.format {fmt}")


def _data_lines(cfg: ExperimentConfig, summary: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> list[str]:
    d = cfg.data
    train_split, eval_split = d.splits()
    root = (
        f"the generated world (`vldistill data generate`; style {d.style}, scale {d.world_scale:g}, "
        f"seed {d.world_seed}), in {DATASETS[d.task]}'s official file format"
        if d.root == "world"
        else f"`{d.root}` ({DATASETS[d.task]}, {_layout_name(d)})"
    )
    lines = [f"- Dataset: {root}.", f"- Training split `{train_split}`: {summary['train_examples']} examples."]
    if manifest is not None:
        params = manifest.get("params", {})
        drawn = ", ".join(f"{k} {params[k]}" for k in ("fraction", "per_group", "max_train") if params.get(k))
        subset = "a low-shot subset" if d.fraction or d.per_group or d.manifest else "the split"
        lines.append(
            f"- Subset: {subset} of {manifest['records']} records"
            + (f" ({drawn}, subset_seed {params.get('seed')})" if drawn else "")
            + f"; its manifest is `subset.json` (sha256 `{manifest['sha256']}`), re-applied with `data.manifest`."
        )
    if d.dev_split is not None or d.dev_holdout is not None:
        dev = f"split `{d.dev_split}`" if d.dev_split is not None else f"{d.dev_holdout} training records held out"
        lines.append(
            f"- Dev set (selection only): {dev}; the weights of step {summary['best_step']} of {summary['steps']} "
            f"were kept ({summary['dev_evaluations']} dev evaluations)."
        )
    shifted = f", and `{d.shift_root}` (domain shift)" if d.shift_root else ""
    lines.append(f"- Evaluation: split `{eval_split}`{shifted}, once, with the kept weights.")
    return lines


def _teacher_rows(cfg: ExperimentConfig, teachers: Mapping[str, Any]) -> list[str]:
    if not teachers:
        return ["No teachers: the student learned from the labels alone."]
    rows = ["| teacher | kind | weights | fingerprint (sha256) |", "|---|---|---|---|"]
    for name, teacher in sorted(teachers.items()):
        tc = cfg.method.teachers[name]
        weights = _source(tc.pretrained, "tiny, randomly initialised")
        rows.append(f"| {name} | {tc.kind} | {weights} | `{teacher.fingerprint()}` |")
    rows.append(
        "\nA fingerprint is the sha256 of the teacher's architecture, weights and preprocessing: the key of "
        "vldistill's teacher cache (`vldistill.models.teachers.base.Teacher.fingerprint`)."
    )
    return rows


def _results(task: str, evaluation: Mapping[str, Mapping[str, float]]) -> list[str]:
    metric = PRIMARY_METRIC[task]
    rows = [
        f"| split | {metric} | images shuffled (control) | difference |",
        "|---|---|---|---|",
    ]
    for split, scores in evaluation.items():
        if split.endswith(SHUFFLED):
            continue
        control = evaluation.get(split + SHUFFLED, {}).get(metric)
        difference = "" if control is None else f"{scores[metric] - control:+.2f}"
        rows.append(f"| {split} | {scores[metric]} | {'' if control is None else control} | {difference} |")
    rows.append(
        "\nThe control scores every example with another example's picture (a fixed derangement): a student that "
        "reads the image loses accuracy there. Breakdowns (per answer type, class or label) are in the run's "
        "`summary.json`."
    )
    return rows


def _metadata(cfg: ExperimentConfig, summary: Mapping[str, Any]) -> ModelCardData:
    task, metric = cfg.data.task, PRIMARY_METRIC[cfg.data.task]
    _, eval_split = cfg.data.splits()
    results = [
        EvalResult(
            task_type=TASK_TYPES[task],
            dataset_type=task,
            dataset_name=DATASETS[task] + (" (domain-shifted)" if split == "shifted" else ""),
            dataset_config=split,  # the Hub groups results by task, dataset, config and split
            dataset_split=eval_split,
            metric_type=metric,
            metric_value=scores[metric],
            metric_name=metric,
        )
        for split, scores in summary["eval"].items()
        if not split.endswith(SHUFFLED)
    ]
    kind = cfg.student.kind
    return ModelCardData(
        model_name=cfg.name,
        library_name="transformers" if kind == "fusion" else "vldistill",
        pipeline_tag="visual-question-answering" if task == "vqa" and kind == "fusion" else None,
        tags=["vldistill", "knowledge-distillation", "vision-language", task, cfg.method.name, f"{kind}-student"],
        datasets=[task],
        metrics=[metric],
        eval_results=results,
    )


def model_card(
    cfg: ExperimentConfig,
    summary: Mapping[str, Any],
    *,
    switches: Mapping[str, Any],
    teachers: Mapping[str, Any],
    student: nn.Module,
    manifest: Mapping[str, Any] | None,
    command: str,
) -> str:
    """The card's text (YAML header and markdown) for a run of ``cfg`` that ended with ``summary``.

    ``switches``: the method's switches as it applies them (``Method.describe()``); ``teachers``: name ->
    teacher (each has ``fingerprint()``); ``manifest``: the run's subset manifest with its ``sha256``
    (``None``: none written); ``command``: the command line that made the run.
    """
    task, method, kind = cfg.data.task, cfg.method.name, cfg.student.kind
    params = sum(p.numel() for p in student.parameters())
    source = cfg.student.pretrained or cfg.student.image_pretrained or cfg.student.text_pretrained
    start = f"from `{source}`" if source else "from a tiny random initialisation (`student:` in the config below)"
    applied = ", ".join(f"{k} {json.dumps(v)}" for k, v in switches.items() if k != "method")
    config = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip()
    what = STUDENTS[kind]
    body = [
        f"# {cfg.name}",
        "",
        f"{what[0].upper()}{what[1:]} student ({params:,} parameters) for {DATASETS[task]} (`{task}`), "
        f"fine-tuned {start} by vldistill with `{method}`: {METHODS[method]}.",
        "",
        "## Data",
        "",
        *_data_lines(cfg, summary, manifest),
        "",
        "## Method and teachers",
        "",
        f"`method.name: {method}`" + (f"; its switches as applied: {applied}." if applied else "."),
        "",
        *_teacher_rows(cfg, teachers),
        "",
        "## Results",
        "",
        *_results(task, summary["eval"]),
        "",
        "Text-only prior: not measured with this run (a protocol entry `prior: {student: {kind: prior}}` trains "
        "it beside the others, and the report states each student's margin over it)."
        if kind != "prior"
        else "This student is the text-only prior itself: the control the other students are compared with.",
        "",
        "## How it was made",
        "",
        f"```text\n{command}\n```",
        "",
        f"{summary['steps']} optimizer steps on {summary['processes']} process(es) in {summary['seconds']} s; "
        f"{_versions()}. The resolved config (every default filled in, overrides applied) is the run's `config.yaml`; "
        "`vldistill train config.yaml --out DIR` trains the run again:",
        "",
        f"<details><summary>config.yaml</summary>\n\n```yaml\n{config}\n```\n\n</details>",
        "",
        "## How to load it",
        "",
        loading_instructions(kind, task),
    ]
    return f"---\n{_metadata(cfg, summary).to_yaml()}\n---\n\n" + "\n".join(body) + "\n"


def write_run_card(
    out_dir: Path,
    cfg: ExperimentConfig,
    summary: Mapping[str, Any],
    method: Any,
    student: nn.Module,
    command: str | None = None,
) -> Path:
    """Write ``out_dir/final/README.md`` (:func:`model_card`); a low-shot run's manifest is copied beside it.

    ``method``: the run's :class:`~vldistill.distill.base.Method` (its switches and teachers);
    ``command``: the command line to record (default: this process's, :func:`command_line`). Returns
    the card's path.
    """
    final = Path(out_dir) / "final"
    manifest = None
    subset = Path(out_dir) / "subset.json"
    if subset.is_file():
        manifest = {**json.loads(subset.read_text()), "sha256": _sha256(subset)}
        if cfg.data.fraction or cfg.data.per_group or cfg.data.manifest:
            shutil.copyfile(subset, final / "subset.json")
    text = model_card(
        cfg,
        summary,
        switches=method.describe(),
        teachers=method.teachers,
        student=student,
        manifest=manifest,
        command=command if command is not None else command_line(),
    )
    card = final / "README.md"
    ModelCard(text).save(card)
    return card
