"""Rescored scores: a head scorer run later on a run's stored embeddings (``winnow rescore``),
kept in a side table beside the parts, never written into them.

Layout::

    <root>/rescored/<scorer>/<run_id>.parquet    columns run_id, candidate_id, score (float64)

The catalog view (``winnow.catalog.query``) joins these by ``(run_id, candidate_id)``: a
row's ``score_<scorer>`` is its part's value where the part has one, else the rescored one.
Rescoring a run again replaces its file (atomically). The file's schema metadata records the
scorer's parameters (``winnow.rescore.params``, JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.catalog.writer import write_part

FOLDER = "rescored"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # a scorer name: a folder name, never a path
SCHEMA = pa.schema([("run_id", pa.string()), ("candidate_id", pa.string()), ("score", pa.float64())])


def rescored_path(root: str | Path, scorer: str, run_id: str) -> Path:
    if not _NAME.fullmatch(scorer):
        raise ValueError(f"not a scorer name: {scorer!r}")
    return Path(root) / FOLDER / scorer / f"{run_id}.parquet"


def write_rescored(
    root: str | Path,
    scorer: str,
    run_id: str,
    ids: Sequence[str],
    scores: Sequence[float],
    params: Mapping[str, Any],
) -> Path:
    """Write run ``run_id``'s rescored ``scores`` (one per candidate id, the scorer's units)."""
    path = rescored_path(root, scorer, run_id)
    table = pa.table(
        {"run_id": [run_id] * len(ids), "candidate_id": list(ids), "score": list(scores)}, schema=SCHEMA
    )
    meta = {b"winnow.rescore.params": json.dumps(params, sort_keys=True).encode()}
    write_part(path, table.replace_schema_metadata(meta))
    return path


def rescored(root: str | Path) -> dict[str, list[Path]]:
    """Scorer name -> its rescored files (finished ones, sorted); empty when there are none."""
    folder = Path(root) / FOLDER
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*/*.parquet")):
        if _NAME.fullmatch(path.parent.name) and not path.name.startswith((".", "_")):
            found.setdefault(path.parent.name, []).append(path)
    return found


def read_rescored(paths: Sequence[Path]) -> pa.Table:
    """The rows of ``paths`` as one table (run_id, candidate_id, score)."""
    return pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in paths])
