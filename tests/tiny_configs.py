"""Tiny experiment configs on the generated world, shared by the engine tests."""

from __future__ import annotations

TINY_STUDENT = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
TINY_TEACHER = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "projection_dim": 16}
TEACHERS = {
    "clip": {"kind": "clip", "tiny": TINY_TEACHER, "image_size": 32},
    "vision": {"kind": "vision", "tiny": TINY_TEACHER, "image_size": 32},
    "text": {"kind": "text", "tiny": TINY_TEACHER},
    "fusion": {"kind": "fusion", "tiny": TINY_TEACHER, "image_size": 32},
}


def tiny_tree(
    task: str = "vqa",
    method: str = "none",
    teachers: tuple[str, ...] = (),
    method_options: dict | None = None,
    **sections,
) -> dict:
    """A config tree of a tiny run on the generated world (scale 0.1); ``sections`` override parts."""
    tree = {
        "name": f"test-{task}-{method}",
        "data": {"task": task, "root": "world", "world_scale": 0.1, "max_train": 24, "max_eval": 12},
        "student": dict(TINY_STUDENT),
        "method": {"name": method, "teachers": {t: TEACHERS[t] for t in teachers}, **(method_options or {})},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3, "log_every": 1},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree
