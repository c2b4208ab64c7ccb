"""Near-duplicates across the catalog (``winnow dedup``), from the stored embeddings.

Rows whose stored CLIP image embeddings have cosine >= a threshold are linked; each connected
group keeps its best row (highest ``by`` score, then catalog order) and marks the others as
duplicates of it. The decision is a side table, never a rewrite of the parts::

    <root>/dedup/decisions.parquet

with one row per row examined: ``run_id``, ``candidate_id``, ``dedup_kept`` (False: a
duplicate), ``duplicate_of_run`` / ``duplicate_of`` (the group's kept row; null when kept)
and ``dedup_cosine`` (cosine with it). The catalog view joins these columns by
``(run_id, candidate_id)``; rows not examined have them null. A new ``winnow dedup`` replaces
the file (atomically).

Pairs are found exactly (blockwise matrix products, float32) up to ``EXACT_MAX`` rows, and
with faiss (the ``dedup`` extra: an inverted-file index, inner product, range search) above:
approximate, measured in bench/dedup.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from winnow.catalog.writer import write_part
from winnow.models.errors import WinnowError

PATH = Path("dedup") / "decisions.parquet"
EXACT_MAX = 50_000  # rows; the exact search costs n^2 * d multiply-adds
BLOCK = 4096  # rows per block of the exact search: a (BLOCK, n) float32 similarity block
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("candidate_id", pa.string()),
        ("dedup_kept", pa.bool_()),
        ("duplicate_of_run", pa.string()),
        ("duplicate_of", pa.string()),
        ("dedup_cosine", pa.float32()),
    ]
)
COLUMNS = SCHEMA.names[2:]  # what the catalog view gains


class DedupError(WinnowError):
    """A deduplication that cannot run (no embeddings, a missing extra)."""


def decisions_path(root: str | Path) -> Path:
    return Path(root) / PATH


def pairs_exact(vectors: np.ndarray, cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of ``vectors`` ((n, d) L2-normalised) with cosine >= ``cosine``."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    found_i, found_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, len(x), BLOCK):
        block = x[start : start + BLOCK] @ x[start:].T  # only j >= the block's first row
        i, j = np.nonzero(block >= cosine)
        i, j = i + start, j + start
        found_i.append(i[j > i])
        found_j.append(j[j > i])
    return np.concatenate(found_i), np.concatenate(found_j)


def pairs_faiss(vectors: np.ndarray, cosine: float, nprobe: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) with cosine >= ``cosine``, found with a faiss inverted-file index (about
    2 * sqrt(n) lists, k-means on 40 rows per list; ``nprobe`` lists searched per row):
    approximate, a pair whose rows fall in lists far apart can be missed. Near-copies nearly
    always share their nearest list, so few lists are searched (recall: bench/dedup.py)."""
    try:
        import faiss
    except ImportError:
        raise DedupError(
            f"{len(vectors):,} embeddings need the dedup extra for the approximate search: "
            "pip install 'winnow[dedup]' (faiss-cpu)"
        ) from None
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    lists = max(1, min(int(2 * math.sqrt(n)), n // 40))  # faiss wants >= 39 training rows per list
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, size=min(n, lists * 40), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = min(nprobe, lists)
    found_i, found_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, n, 65536):
        limits, _, labels = index.range_search(x[start : start + 65536], cosine)
        i = np.repeat(np.arange(len(limits) - 1), np.diff(limits).astype(np.int64)) + start
        keep = labels > i
        found_i.append(i[keep])
        found_j.append(labels[keep].astype(np.int64))
    return np.concatenate(found_i), np.concatenate(found_j)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of n nodes linked by pairs (i, j): each node's smallest member."""
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving
            a = parent[a]
        return a

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(a) for a in range(n)], dtype=np.int64)


@dataclass(frozen=True)
class Decisions:
    """The outcome: the side table, the groups with more than one row, and the rows dropped."""

    table: pa.Table
    groups: int
    duplicates: int
    method: str  # exact or faiss


def decide(
    run_ids: list[str], candidate_ids: list[str], scores: np.ndarray, vectors: np.ndarray, cosine: float
) -> Decisions:
    """Group rows (in catalog order; ``scores``: (n,) higher is better, NaN lowest) by their
    ``vectors`` and keep each group's best."""
    n = len(run_ids)
    method = "exact" if n <= EXACT_MAX else "faiss"
    i, j = (pairs_exact if method == "exact" else pairs_faiss)(vectors, cosine)
    root = components(n, i, j)
    rank = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.lexsort((np.arange(n), -rank, root))  # per group: best score, then catalog order
    keeper = np.empty(n, dtype=np.int64)
    first = np.r_[True, root[order][1:] != root[order][:-1]]
    keeper[order] = order[first][np.cumsum(first) - 1]
    kept = keeper == np.arange(n)
    x, dropped = np.asarray(vectors, dtype=np.float32), np.flatnonzero(~kept)
    similarity = np.zeros(n, dtype=np.float32)
    similarity[dropped] = np.einsum("nd,nd->n", x[dropped], x[keeper[dropped]])
    table = pa.table(
        {
            "run_id": run_ids,
            "candidate_id": candidate_ids,
            "dedup_kept": kept,
            "duplicate_of_run": [None if k else run_ids[m] for k, m in zip(kept, keeper, strict=True)],
            "duplicate_of": [None if k else candidate_ids[m] for k, m in zip(kept, keeper, strict=True)],
            "dedup_cosine": pa.array(similarity, mask=kept),
        },
        schema=SCHEMA,
    )
    sizes = np.bincount(root, minlength=n)
    return Decisions(table, int((sizes > 1).sum()), int((~kept).sum()), method)


def write_decisions(root: str | Path, decisions: Decisions, cosine: float) -> Path:
    """Replace the catalog's dedup decisions, atomically."""
    path = decisions_path(root)
    meta = {b"winnow.dedup.cosine": str(cosine).encode(), b"winnow.dedup.method": decisions.method.encode()}
    write_part(path, decisions.table.replace_schema_metadata(meta))
    return path


def read_decisions(root: str | Path) -> pa.Table | None:
    """The catalog's dedup decisions, or None when ``winnow dedup`` has not run."""
    path = decisions_path(root)
    return pq.read_table(path, schema=SCHEMA) if path.exists() else None


@dataclass(frozen=True)
class DedupResult:
    """``rows``: kept rows examined; ``missing``: kept rows left out (no stored embedding)."""

    rows: int
    missing: int
    decisions: Decisions
    path: Path


def dedup_catalog(
    root: str | Path, cosine: float, where: str | None = None, by: str = "combined_score"
) -> DedupResult:
    """Group the kept rows of the catalog at ``root`` (those matching the SQL ``where`` too)
    by their stored embeddings, keep each group's best by column ``by``, and write the
    decisions. ``cosine`` in (0, 1]."""
    from winnow.catalog.embeddings import load
    from winnow.catalog.query import CatalogError, query

    if not 0 < cosine <= 1:
        raise DedupError(f"--cosine must be in (0, 1], got {cosine}")
    if not by.replace("_", "").isalnum():
        raise DedupError(f"--by must be a column name, got {by!r}")
    # kept_final: a reviewer's decision where there is one, else the policy's (catalog.labels)
    condition = f"kept_final AND ({where})" if where else "kept_final"
    try:
        rows = query(
            root,
            f'SELECT run_id, shard_id, candidate_id, "{by}" AS by FROM catalog WHERE {condition} '
            "ORDER BY run_id, shard_id, prompt_id, candidate_index",
        )
    except CatalogError as err:
        raise DedupError(str(err)) from None
    keys = list(zip(*(rows[c].to_pylist() for c in ("run_id", "shard_id", "candidate_id")), strict=True))
    found, vectors = load(root, keys)
    if not found.any():
        raise DedupError(f"none of the {len(keys)} kept rows has a stored embedding (run.embeddings)")
    chosen = [k for k, f in zip(keys, found, strict=True) if f]
    scores = rows["by"].to_numpy(zero_copy_only=False).astype(np.float64)[found]
    decisions = decide([k[0] for k in chosen], [k[2] for k in chosen], scores, vectors, cosine)
    path = write_decisions(root, decisions, cosine)
    return DedupResult(len(chosen), int((~found).sum()), decisions, path)
