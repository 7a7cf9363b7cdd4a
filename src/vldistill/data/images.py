"""Image references: a file on disk, or the encoded bytes in one cell of an Arrow table, read lazily.

Records name their images by reference (:data:`ImageRef`). The publishers' layouts give a
:class:`~pathlib.Path`; layouts that store the encoded images themselves, ViLT's Arrow files and
Hugging Face ``datasets`` folders or Parquet files, give a :class:`StoredImage`: the table, the row
and the column. Its bytes are read only when the image is decoded, from the table memory-mapped
(``pyarrow.memory_map``; ``datasets`` memory-maps its own Arrow files), so a 20 GB file costs the
pages of the images actually read, never the whole file in memory.

A table is opened once per process (DataLoader workers open their own; an open memory map is not
shared across ``fork``) and kept in a small cache. References are frozen dataclasses: hashable (the
image caches key on them) and picklable (they travel to worker processes).
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from vldistill.errors import DataError

MAX_MEGAPIXELS = 40
"""Images above this many megapixels are refused: no dataset of these tasks has them (decompression bomb)."""
OPEN_TABLES = 8
"""How many tables a process keeps open (memory-mapped) at once."""

TableKind = Literal["arrow_ipc", "hf_disk", "hf_parquet"]


@dataclass(frozen=True)
class TableSource:
    """How to open a table of stored images in any process.

    Attributes:
        kind: ``arrow_ipc``: an Arrow IPC *file* (ViLT's ``vqav2_val.arrow``), opened with
            ``pyarrow.ipc.open_file(pyarrow.memory_map(path))``; ``hf_disk``: a folder written by
            ``datasets.Dataset.save_to_disk``, opened with ``datasets.load_from_disk``; ``hf_parquet``:
            Parquet files of one split, opened with ``datasets.load_dataset("parquet", ...)`` (which
            converts them once into memory-mapped Arrow files in the ``datasets`` cache).
        path: the file or folder, as named in error messages.
        files: the Parquet files (``hf_parquet`` only).
    """

    kind: TableKind
    path: Path
    files: tuple[Path, ...] = ()

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class StoredImage:
    """An encoded image (JPEG, PNG, ...) in row ``row``, column ``column`` of a table.

    The cell holds the bytes (a ``binary`` column, as ViLT writes) or a ``datasets.Image()`` struct
    ``{bytes, path}`` whose bytes are set (``save_to_disk`` embeds them).
    """

    source: TableSource
    row: int
    column: str

    def __str__(self) -> str:
        return f"{self.source.path} (row {self.row}, column '{self.column}')"


ImageRef = Path | StoredImage
"""What a record names an image by: a file, or a cell of a table."""

_tables: OrderedDict[tuple[int, TableSource], Any] = OrderedDict()
_lock = threading.Lock()


def open_table(source: TableSource) -> Any:
    """The table of ``source``, opened once per process: a ``pyarrow.Table`` backed by a memory map
    (``arrow_ipc``) or a ``datasets.Dataset`` in ``arrow`` format (``hf_*``).

    Raises:
        DataError: the file is missing, truncated, or not of its kind.
    """
    key = (os.getpid(), source)
    with _lock:
        table = _tables.get(key)
        if table is None:
            table = _open(source)
            _tables[key] = table
            while len(_tables) > OPEN_TABLES:
                _tables.popitem(last=False)
        else:
            _tables.move_to_end(key)
        return table


def _open(source: TableSource) -> Any:
    if source.kind == "arrow_ipc":
        return read_arrow_file(source.path)
    from vldistill.data.readers.hf_open import open_dataset

    return open_dataset(source).with_format("arrow")


def read_arrow_file(path: Path) -> Any:
    """The ``pyarrow.Table`` of an Arrow IPC file, memory-mapped: no column is read until used.

    Raises:
        DataError: missing, truncated (the IPC file format ends with a footer and its magic bytes, so a
            cut file is found here), or not an Arrow IPC file (e.g. the stream format).
    """
    import pyarrow as pa

    if not path.is_file():
        raise DataError(path, None, "file not found", "pass the folder that holds the Arrow files")
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            path,
            None,
            f"not a complete Arrow IPC file ({problem}; truncated?)",
            "write it again with the project's write_*.py script, or copy it again",
        ) from None


def image_bytes(ref: StoredImage) -> bytes:
    """The encoded image in the cell ``ref`` names (that one cell is read).

    Raises:
        DataError: the table cannot be opened, or the cell holds no bytes.
    """
    table = open_table(ref.source)
    if ref.source.kind == "arrow_ipc":
        value = table.column(ref.column)[ref.row].as_py()
    else:
        value = table[ref.row].column(ref.column)[0].as_py()
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, bytes) or not value:
        raise DataError(ref.source.path, f"row {ref.row}", f"column '{ref.column}' holds no image bytes", STORE_FIX)
    return value


STORE_FIX = "store the encoded image in the column (datasets: an Image() column written by save_to_disk)"


def _opened(ref: ImageRef) -> Image.Image:
    """``Image.open`` of a file or of a stored image's bytes (lazy: the pixels are not decoded yet)."""
    if isinstance(ref, StoredImage):
        try:
            return Image.open(io.BytesIO(image_bytes(ref)))
        except UnidentifiedImageError:  # PIL's message names the BytesIO object, not the image
            raise UnidentifiedImageError("no image format PIL knows starts these bytes") from None
    return Image.open(ref)


def image_exists(ref: ImageRef) -> bool:
    """Whether the image is there: a file exists; a stored image's cell was checked by its reader."""
    return True if isinstance(ref, StoredImage) else ref.is_file()


def image_problem(ref: ImageRef) -> tuple[str, str] | None:
    """``(problem, fix)`` if the image ``ref`` names is missing, unreadable or too large, else None.

    JPEGs get a draft decode at 1/8 scale (``verify`` does not decode JPEG; the draft catches truncated
    files cheaply); other formats ``Image.verify``. Above :data:`MAX_MEGAPIXELS` is refused.
    """
    if not image_exists(ref):
        return "image not found", f"download and extract the images into {Path(ref).parent}"
    try:
        with warnings.catch_warnings():
            # The explicit size check below replaces PIL's own bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _opened(ref) as image:
                width, height = image.size
                if width * height > MAX_MEGAPIXELS * 1_000_000:
                    return (
                        f"image is {width}x{height} pixels, over {MAX_MEGAPIXELS} megapixels (a decompression bomb?)",
                        "replace the image with the publisher's original",
                    )
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    image.load()
                else:
                    image.verify()
    except DataError as err:
        return err.problem, err.fix
    except Image.DecompressionBombError as err:
        return f"image is a decompression bomb ({err})", "replace the image with the publisher's original"
    except (OSError, SyntaxError, ValueError) as err:
        return f"image cannot be read ({err})", "re-download the image" if isinstance(ref, Path) else STORE_FIX
    return None


def open_rgb(ref: ImageRef) -> Image.Image:
    """The image ``ref`` names, decoded to RGB.

    Raises:
        DataError: a stored image's table or cell is unusable.
        OSError, ValueError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError: the bytes do
            not decode (the caller words these: :func:`vldistill.data.loader.decode_image`).
    """
    with _opened(ref) as raw:
        return raw.convert("RGB")
