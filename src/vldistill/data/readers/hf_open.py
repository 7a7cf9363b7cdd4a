"""Opening one split of a Hugging Face ``datasets`` dataset, as the library means it to be opened.

``datasets.load_from_disk`` for a folder written by ``Dataset.save_to_disk`` (or one split folder of a
``DatasetDict.save_to_disk``), ``datasets.load_dataset("parquet", data_files=..., split="train")`` for
Parquet files (converted once into Arrow files in the ``datasets`` cache, ``$HF_DATASETS_CACHE``; later
calls reuse them). Both give a ``Dataset`` backed by memory-mapped Arrow files
(https://huggingface.co/docs/datasets/about_arrow): opening reads no rows. ``datasets`` is imported
here only, so reading the publishers' layouts never pays for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from vldistill.data.images import TableSource
from vldistill.errors import DataError


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or info logs from ``datasets`` while opening (the CLI prints one line per error)."""
    import datasets

    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def open_dataset(source: TableSource) -> Any:
    """The ``datasets.Dataset`` of one split (``source.kind`` ``hf_disk`` or ``hf_parquet``).

    Raises:
        DataError: the folder or files cannot be opened as a dataset (missing, truncated, not Arrow or
            Parquet, a ``DatasetDict`` folder given where one split is meant), naming them and the fix.
    """
    import datasets
    import pyarrow as pa

    disk = source.kind == "hf_disk"
    try:
        with _quiet():
            if disk:
                dataset = datasets.load_from_disk(str(source.path))
            else:
                files = [str(f) for f in source.files]
                dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        pa.ArrowException,
        datasets.exceptions.DatasetGenerationError,
    ) as err:
        cause = err.__cause__ or err
        problem = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        what, fix = ("datasets folder", "Dataset.save_to_disk") if disk else ("Parquet files", "Dataset.to_parquet")
        raise DataError(
            source.path,
            None,
            f"cannot open the {what} ({type(cause).__name__}: {problem})",
            f"write it again with {fix}",
        ) from None
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            source.path, None, "holds several splits (a DatasetDict)", "point to the root that holds the split folders"
        )
    return dataset
