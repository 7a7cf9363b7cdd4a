"""Session-wide setup: a private cache folder (generated world, teacher caches) for the test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def vldistill_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point ``$VLDISTILL_CACHE`` at a folder of this test session (generated once, shared by tests)."""
    folder = tmp_path_factory.mktemp("vldistill-cache")
    old = os.environ.get("VLDISTILL_CACHE")
    os.environ["VLDISTILL_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("VLDISTILL_CACHE", None)
    else:
        os.environ["VLDISTILL_CACHE"] = old


@pytest.fixture(scope="session")
def caption_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated world of both styles (150 captions per style), shared by the demo pre-training tests.

    Read-only for its users: a test that writes into a world makes its own.
    """
    from vldistill.data.world import generate_world

    out = tmp_path_factory.mktemp("caption-world")
    generate_world(out, scale=0.01875)
    return out
