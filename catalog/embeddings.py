"""Stored CLIP image embeddings: one file beside each part, keyed by ``candidate_id``.

Layout::

    <root>/runs/<run_id>/_embeddings/shard-<shard_id>.parquet

Columns ``candidate_id`` (string) and ``embedding`` (fixed-size list of float16, the CLIP's
width, L2-normalised in float32 before rounding): 2 bytes per dimension, 1,536 bytes per row
for ViT-L/14 (768-d) plus the id; random-looking float16 barely compresses. The run manifest's
``embedding`` records which CLIP made them. The leading underscore keeps the folder out of the
catalog's Parquet dataset (pyarrow and pandas skip ``_`` paths; the ``runs/*/*.parquet`` glob
does not descend).

A shard writes its embeddings before its part, both atomically: a part on disk means its
embeddings are there too (a shard stopped in between has no part and is redone on resume).
Candidates are identified within a run, so readers key rows by ``(run_id, candidate_id)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from winnow.catalog.writer import write_part
from winnow.models.errors import WinnowError

FOLDER = "_embeddings"


class EmbeddingsError(WinnowError):
    """Stored embeddings that are missing or unreadable."""


def embeddings_path(root: Path, run_id: str, shard_id: str) -> Path:
    return Path(root) / "runs" / run_id / FOLDER / f"shard-{shard_id}.parquet"


def embeddings_table(ids: Sequence[str], vectors: np.ndarray) -> pa.Table:
    """The table of ``vectors`` ((n, d), any float dtype) stored as float16 by ``ids``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float16)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"expected ({len(ids)}, d) embeddings, got {vectors.shape}")
    flat = pa.array(vectors.reshape(-1), type=pa.float16())
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({"candidate_id": pa.array(list(ids), pa.string()), "embedding": column})


def write_embeddings(path: Path, ids: Sequence[str], vectors: np.ndarray) -> None:
    """Write one shard's embeddings atomically (``vectors``: (n, d), float16 on disk)."""
    write_part(path, embeddings_table(ids, vectors))


def read_embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    """One shard's (candidate ids, (n, d) float16 embeddings)."""
    try:
        table = pq.read_table(path)
        column = table["embedding"].combine_chunks()
        width = column.type.list_size
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        return table["candidate_id"].to_pylist(), vectors
    except (OSError, KeyError, AttributeError, pa.ArrowException) as err:
        raise EmbeddingsError(f"cannot read embeddings {path}: {err}") from None


def load(root: str | Path, keys: Iterable[tuple[str, str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """The stored embeddings of ``keys`` ((run_id, shard_id, candidate_id) triples): (found,
    a bool (n,) mask of the keys that have one) and (m, d) float16, in key order. Each shard's
    file is read once."""
    keys = list(keys)
    by_shard: dict[tuple[str, str], list[int]] = {}
    for i, (run_id, shard_id, _) in enumerate(keys):
        by_shard.setdefault((run_id, shard_id), []).append(i)
    found = np.zeros(len(keys), dtype=bool)
    rows: dict[int, np.ndarray] = {}
    for (run_id, shard_id), wanted in by_shard.items():
        path = embeddings_path(Path(root), run_id, shard_id)
        if not path.exists():
            continue
        ids, vectors = read_embeddings(path)
        index = {c: j for j, c in enumerate(ids)}
        for i in wanted:
            j = index.get(keys[i][2])
            if j is not None:
                found[i], rows[i] = True, vectors[j]
    if not rows:
        return found, np.zeros((0, 0), dtype=np.float16)
    return found, np.stack([rows[i] for i in range(len(keys)) if found[i]])
