"""Summaries of one run, read back from its Parquet parts with plain pyarrow/pandas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from winnow.catalog.query import score_columns
from winnow.catalog.stats import describe

SUMMARY_STATS = ("count", "nonfinite", "mean", "min", "median", "max")  # of describe's


def read_run(root: Path, run_id: str) -> pd.DataFrame:
    """All rows of ``run_id`` (every finished shard)."""
    return pq.read_table(Path(root) / "runs" / run_id).to_pandas()


def score_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per score column (and the combined score) and group (kept, rejected; a group without rows
    is left out): ``SUMMARY_STATS`` of ``describe``, over finite values, in the score's units."""
    kept = rows["kept"].fillna(False).astype(bool)
    records = []
    for column in sorted([*score_columns(list(rows.columns)), "combined_score"]):
        for group, mask in (("kept", kept), ("rejected", ~kept)):
            if mask.any():
                stats = describe(rows.loc[mask, column])
                records.append({"score": column, "group": group, **{k: stats[k] for k in SUMMARY_STATS}})
    return pd.DataFrame.from_records(records)
