"""``vldistill plan``: a dry run that shows, before any step, what feeds what.

Builds the data, student, teachers and method from a config, runs one batch, and reports which
teacher output feeds which student output with shapes and projections, how many tokens are selected
per instance, how alike the targets are before and after ``target_norm``, the range of the
per-instance weights, each loss term's value on the first batch with the norm of its gradient on the
student's parameters relative to the task term's, and parameter counts. A shape or config mismatch
fails here with a message naming the term and the fix, not mid-training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from vldistill.config import ExperimentConfig
from vldistill.data.loader import ExampleDataset, collate_fn
from vldistill.distill.features import FeatureDistillation, comparison_grid
from vldistill.distill.normalize import mean_pairwise_cosine
from vldistill.errors import ConfigError
from vldistill.models.heads import task_loss
from vldistill.training.experiment import build_models, load_data


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape)


@dataclass
class Plan:
    method: dict[str, Any]
    student: dict[str, Any]
    teachers: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    gradients: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] | None = None
    parameters: dict[str, int] = field(default_factory=dict)


def gradient_ratios(terms: dict[str, torch.Tensor], parameters: list[torch.Tensor]) -> dict[str, float]:
    """Each term's gradient norm on ``parameters`` divided by the ``task`` term's.

    The norm is the L2 norm of the gradient over all ``parameters`` together (terms that do not
    reach them: 0). A ratio of 6 means that, at this step, the term pulls the student six times as
    hard as the task loss: its weight, not its printed value, is what makes it matter.

    Example:
        parameters ``w = [w0, w1]``, ``task = w0 + 2 w1`` (gradient norm sqrt(5)), ``a = 3 w0``
        (norm 3) -> ``{"task": 1.0, "a": 3 / sqrt(5) = 1.3416}``.
    """
    norms = {}
    for name, term in terms.items():
        if not term.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    task = norms["task"]
    return {name: (n / task if task > 0 else float("inf") if n > 0 else 0.0) for name, n in norms.items()}


def make_plan(cfg: ExperimentConfig, batch_size: int = 4) -> Plan:
    """Build everything ``cfg`` names and run one batch of ``batch_size`` examples through it.

    ``target_norm: standardize`` statistics come from the plan's own few examples (``4 *
    batch_size``), not the training run's sample: the plan shows their effect, not their final values.
    """
    data = load_data(cfg.data)
    built = build_models(cfg, data)
    loader = torch.utils.data.DataLoader(
        ExampleDataset(data.train[: batch_size * 4]),
        batch_size=batch_size,
        collate_fn=collate_fn(built.processor, data.task, data.builder.answers or None),
    )
    batch = next(iter(loader))
    method, student = built.method, built.student
    out = student(batch.student, output_cross_attention=method.needs_cross_attention)
    targets = method.targets(batch)
    method.setup(out, targets)
    method.prepare(loader.dataset.examples, store=loader.dataset.store, batch_size=batch_size)
    plan = Plan(
        method=method.describe(),
        student={
            "kind": cfg.student.kind,
            "task": data.task,
            "labels": data.builder.num_labels,
            "text_tokens": _shape(out.text_tokens),
            "image_tokens": _shape(out.image_tokens),
            "image_grid": f"{out.image_grid[0]}x{out.image_grid[1]}",
            "logits": _shape(out.logits),
            "train_examples": len(data.train),
        },
    )
    for name, teacher in method.teachers.items():
        t = targets[name]
        plan.teachers.append(
            {
                "name": name,
                "kind": teacher.kind,
                "parameters": _count(teacher),
                "image_size": "x".join(map(str, teacher.processor.image_size)),
                "max_length": teacher.processor.max_length,
                "outputs": {k: _shape(v) for k, v in t.items() if k != "image_grid"},
            }
        )
    if isinstance(method, FeatureDistillation):
        layer = cfg.method.student_layer
        where = "student" if layer == -1 else f"student layer {layer}"
        try:
            for pair in method.token_pairs(out, batch, targets):
                term, tt, sel = pair.term, pair.teacher, pair.selected
                name, modality = term.split("/")
                proj = method.projections[f"{name}_{modality}"]
                counts = sel.sum(dim=1).float()
                if modality == "image":
                    grid = tuple(int(v) for v in targets[name]["image_grid"][0])
                    cells = comparison_grid(grid, out.image_grid)
                    source = f"{name}.image_tokens {_shape(targets[name]['image_tokens'])} ({grid[0]}x{grid[1]})"
                    student_side = (
                        f"{where} image_tokens {_shape(out.image_tokens)} "
                        f"({out.image_grid[0]}x{out.image_grid[1]}); compared on {cells[0]}x{cells[1]}"
                    )
                else:
                    source = f"{name}.text_words {_shape(targets[name]['text_words'])}"
                    student_side = f"{where} text_tokens {_shape(out.text_tokens)} pooled by word"
                plan.links.append(
                    {
                        "term": f"feature/{term}",
                        "teacher": source,
                        "student": student_side,
                        "projection": f"Linear({proj.in_features}->{proj.out_features})",
                        "compared": _shape(tt),
                        "selected_min": int(counts.min()),
                        "selected_mean": round(float(counts.mean()), 2),
                        "selected_max": int(counts.max()),
                        "target_cosine": round(mean_pairwise_cosine(pair.raw_teacher, pair.real), 3),
                        "normalized_cosine": round(mean_pairwise_cosine(tt, pair.real), 3),
                    }
                )
            w = method.weights(out, batch, targets)
            plan.weights = {
                "kind": method.weighting,
                "min": round(float(w.min()), 4),
                "mean": round(float(w.mean()), 4),
                "max": round(float(w.max()), 4),
            }
        except RuntimeError as err:
            raise ConfigError(
                f"plan: student and teacher features do not line up ({err}); fix: check the "
                "teachers' image_size/max_length against the student's"
            ) from err
    if method.needs_cross_attention and out.cross_attention is not None:
        ca = out.cross_attention
        plan.links.append(
            {
                "term": "attention/t2i + i2t",
                "teacher": "fusion last-layer joint attention, cross blocks",
                "student": f"t2i {_shape(ca.text_to_image)}, i2t {_shape(ca.image_to_text)}",
                "projection": "none (same tokens and heads)",
                "compared": "KL per head",
            }
        )
    terms = {"task": task_loss(data.task, out.logits, batch.targets), **method.losses(out, batch, targets)}
    plan.losses = {k: round(float(v.detach()), 5) for k, v in terms.items()}
    trained = [p for p in student.parameters() if p.requires_grad]
    plan.gradients = {k: float(f"{v:.3g}") for k, v in gradient_ratios(terms, trained).items()}
    plan.parameters = {
        "student": _count(student),
        "projections": _count(method.projections),
        "teachers (frozen)": sum(_count(t) for t in method.teachers.values()),
    }
    return plan


def format_term(term: str, value: float, ratio: float | None) -> str:
    """One line of the plan's loss table, e.g. ``feature/clip/image 0.93  grad 5.9x task``."""
    grad = "" if ratio is None else f"  grad {ratio:.2g}x task"
    return f"{term} {value:.4g}{grad}"


def render_plan(plan: Plan, console: Console) -> None:
    console.print(f"[bold]method[/bold] {plan.method}")
    console.print(f"[bold]student[/bold] {plan.student}")
    for t in plan.teachers:
        console.print(
            f"[bold]teacher {t['name']}[/bold] ({t['kind']}, {t['parameters']:,} params, "
            f"images {t['image_size']}, text <= {t['max_length']} tokens): {t['outputs']}"
        )
    if plan.links:
        table = Table(title="what feeds what")
        columns = ("term", "teacher", "projection", "student", "tokens selected (min/mean/max)", "target cosine")
        for col in columns:
            table.add_column(col)
        for link in plan.links:
            sel = cosine = "-"
            if "selected_min" in link:
                sel = f"{link['selected_min']}/{link['selected_mean']}/{link['selected_max']}"
                cosine = f"{link['target_cosine']} -> {link['normalized_cosine']}"
            table.add_row(link["term"], link["teacher"], link["projection"], link["student"], sel, cosine)
        console.print(table)
    if plan.weights:
        console.print(f"[bold]per-instance weights[/bold] {plan.weights}")
    console.print("[bold]loss terms on one batch[/bold] (value, gradient norm on the student relative to the task's)")
    for term, value in plan.losses.items():
        console.print(f"  {format_term(term, value, plan.gradients.get(term))}")
    console.print("[bold]parameters[/bold] " + ", ".join(f"{k}: {v:,}" for k, v in plan.parameters.items()))
