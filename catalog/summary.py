"""Summaries of one run, read back from its Parquet parts with plain pyarrow/pandas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq


def read_run(root: Path, run_id: str) -> pd.DataFrame:
    """All rows of ``run_id`` (every finished shard)."""
    return pq.read_table(Path(root) / "runs" / run_id).to_pandas()


def score_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per scorer (and the combined score): mean/min/median/max of kept vs rejected rows."""
    columns = [c for c in rows.columns if c.startswith("score_")] + ["combined_score"]
    long = rows.melt(id_vars=["kept"], value_vars=columns, var_name="score", value_name="value")
    long["group"] = long["kept"].map({True: "kept", False: "rejected"})
    stats = long.groupby(["score", "group"])["value"].agg(["count", "mean", "min", "median", "max"])
    return stats.reset_index()
