"""Atomic writes into the catalog folder: images first, then one Parquet part per shard.

Layout (names come from ids, never from prompt text)::

    <root>/runs/<run_id>/shard-<shard_id>.parquet
    <root>/images/<run_id>/<candidate_id>.png     (an external image keeps its suffix)

Every file is written to a hidden temporary name in its final folder and renamed, so a
reader (pyarrow/pandas/DuckDB skip dot-files) never sees a partial file. A shard's Parquet
part is written last: its presence means the shard is complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def part_path(root: Path, run_id: str, shard_id: str) -> Path:
    return root / "runs" / run_id / f"shard-{shard_id}.parquet"


def image_relpath(run_id: str, candidate_id: str, suffix: str = ".png") -> str:
    return f"images/{run_id}/{candidate_id}{suffix}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a hidden temporary file in the same folder and a rename,
    so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Process and thread id: threads of one process writing the same path each have their own.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk's write names no file: say which one, and its size
        raise OSError(err.errno, f"{err.strerror} (writing {len(data):,} bytes)", str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image (deterministic for equal pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(root: Path, relpath: str, data: bytes) -> str:
    """Write an image file's bytes at ``root/relpath``; return their sha256."""
    atomic_write(root / relpath, data)
    return hashlib.sha256(data).hexdigest()


def write_part(path: Path, table: pa.Table) -> None:
    """Write one shard's rows as a Parquet part, atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write(path, sink.getvalue().to_pybytes())
