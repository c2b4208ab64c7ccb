"""``winnow rescore``: add a head scorer (``winnow.scoring.head``: aesthetic, nsfw, ...) to the
rows of existing runs from their stored embeddings, with no image and no regeneration.

A run is rescored when its manifest records stored embeddings of the scorer's own CLIP and its
parts do not already have the score; its scores go to a side table
(``winnow.catalog.rescore``) that the catalog view joins. Rows without a stored embedding
(``run.embeddings: kept`` rejects, pruned candidates) stay null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from winnow.catalog.embeddings import FOLDER, read_embeddings
from winnow.catalog.manifest import find_manifest
from winnow.catalog.query import CatalogError, part_files
from winnow.catalog.rescore import write_rescored
from winnow.catalog.schema import score_column
from winnow.models.errors import WinnowError
from winnow.scoring.base import REGISTRY, ScorerParams
from winnow.scoring.clip import ClipSpec
from winnow.scoring.head import HeadScorer

CHUNK = 8192  # embeddings per head call: bounds memory at millions of rows


class RescoreError(WinnowError):
    """A scorer that cannot be rescored from embeddings."""


@dataclass(frozen=True)
class RunRescore:
    """One run's outcome: ``rows`` rescored (0 when skipped) and why it was ``skipped``."""

    run_id: str
    rows: int
    skipped: str | None = None


def rescore(
    root: str | Path, name: str, params: ScorerParams, device: str = "cpu", runs: Sequence[str] | None = None
) -> list[RunRescore]:
    """Score every run of the catalog at ``root`` (or only ``runs``) with head scorer ``name``
    (its validated ``params``) from the stored embeddings; one outcome per run."""
    cls = REGISTRY.get(name)
    if cls is None or not issubclass(cls, HeadScorer):
        heads = ", ".join(sorted(n for n, c in REGISTRY.items() if issubclass(c, HeadScorer)))
        raise RescoreError(f"{name!r} is not a head scorer on the CLIP embedding (those are: {heads})")
    scorer = cls(params, torch.device(device))
    found = sorted({p.parent.name for p in part_files(root)})
    if not found:
        raise CatalogError(f"no catalog parts found in {root}")
    results = []
    for run_id in runs or found:
        skipped = _why_not(root, run_id, scorer)
        if skipped:
            results.append(RunRescore(run_id, 0, skipped))
            continue
        ids, scores = [], []
        for path in sorted((Path(root) / "runs" / run_id / FOLDER).glob("shard-*.parquet")):
            shard_ids, vectors = read_embeddings(path)
            ids += shard_ids
            scores.append(score_embeddings(scorer, vectors))
        values = np.concatenate(scores) if scores else np.zeros(0)
        write_rescored(root, name, run_id, ids, values.tolist(), params.model_dump(mode="json"))
        results.append(RunRescore(run_id, len(ids)))
    return results


def score_embeddings(scorer: HeadScorer, vectors: np.ndarray) -> np.ndarray:
    """(n,) float64 scores of stored (n, d) float16 embeddings, in chunks of ``CHUNK``."""
    out = [np.zeros(0)]
    for start in range(0, len(vectors), CHUNK):
        chunk = torch.from_numpy(np.asarray(vectors[start : start + CHUNK], dtype=np.float32))
        out.append(scorer.score_embeddings(chunk.to(scorer.device)).double().numpy())
    return np.concatenate(out)


def _why_not(root: str | Path, run_id: str, scorer: HeadScorer) -> str | None:
    """Why run ``run_id`` is not rescored by ``scorer``, or None if it is."""
    if not part_files(root, run_id):
        return "no such run"
    manifest = find_manifest(root, run_id)
    if manifest is None or manifest.embedding is None:
        return "no stored embeddings"
    made_by = ClipSpec.model_validate(manifest.embedding.clip)
    if made_by != scorer.clip:
        return f"its embeddings are of CLIP {made_by.model!r}, the scorer reads {scorer.clip.model!r}"
    column = score_column(scorer.name)
    for part in part_files(root, run_id):
        if (
            column in pq.read_schema(part).names
            and pc.count(pq.read_table(part, columns=[column])[0]).as_py()
        ):
            return "its rows already have the score"
    return None
