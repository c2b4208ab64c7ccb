"""Catalog statistics: counts per run and score distributions per run and scorer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from winnow.catalog.query import score_columns

ALL = "(all runs)"


def run_stats(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run, then a total row (``run_id`` = ``ALL``).

    Columns: run_id, source (comma-joined), prompts, candidates, kept (``kept_final``: a
    reviewer's decision where there is one, else the policy's), acceptance (kept /
    candidates, in [0, 1]), images (rows with a saved image file), duplicates (kept rows
    ``winnow dedup`` marked near-duplicates), first/last (created_at).
    """
    records = [_counts(run, group) for run, group in rows.groupby("run_id", sort=True)]
    if rows["run_id"].nunique() > 1:
        records.append(_counts(ALL, rows))
    return pd.DataFrame.from_records(records)


def _counts(run_id: str, rows: pd.DataFrame) -> dict:
    kept = int(rows["kept_final"].fillna(False).astype(bool).sum())
    return {
        "run_id": run_id,
        "source": ",".join(sorted(rows["source"].dropna().unique())),
        "prompts": int(rows[["run_id", "prompt_id"]].drop_duplicates().shape[0]),
        "candidates": len(rows),
        "kept": kept,
        "acceptance": kept / len(rows) if len(rows) else math.nan,
        "images": int(rows["image_path"].notna().sum()),
        # kept rows `winnow dedup` marked near-duplicates of another (0 before it has run)
        "duplicates": int(rows["dedup_kept"].eq(False).sum()) if "dedup_kept" in rows else 0,
        "first": rows["created_at"].min(),
        "last": rows["created_at"].max(),
    }


def score_stats(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run and score column (every ``score_*`` plus ``combined_score``) and group (all,
    kept, rejected; by ``kept_final``): the statistics of ``describe`` (finite values;
    ``nonfinite`` counts the rest).

    Scores are in each scorer's own units (higher is better); a scorer that did not run for a
    run (its column is null there) is left out of that run.
    """
    columns = [*score_columns(list(rows.columns)), "combined_score"]
    records = []
    for run_id, run in rows.groupby("run_id", sort=True):
        kept = run["kept_final"].fillna(False).astype(bool)
        for column in columns:
            values = run[column].astype("float64")
            if values.isna().all():
                continue
            for group, mask in (("all", kept | ~kept), ("kept", kept), ("rejected", ~kept)):
                records.append({"run_id": run_id, "score": column, "group": group, **describe(values[mask])})
    return pd.DataFrame.from_records(records)


def describe(values: pd.Series) -> dict:
    """Statistics of the finite values of ``values`` (in the values' own units): count, mean,
    std, min, p10, median, p90, max; NaN when none is finite. ``nonfinite`` counts the values
    left out (NaN: a failed or skipped score; -inf: a combined score that never existed, as for
    pruned or invalid candidates), so a mean is never -inf and never silently drops rows."""
    numbers = values.to_numpy(dtype="float64", na_value=np.nan)
    finite = pd.Series(numbers[np.isfinite(numbers)])
    if finite.empty:
        nan = math.nan
        return {"count": 0, "nonfinite": int(numbers.size), "mean": nan, "std": nan, "min": nan,
                "p10": nan, "median": nan, "p90": nan, "max": nan}  # fmt: skip
    q = finite.quantile([0.1, 0.5, 0.9])
    return {
        "count": int(finite.size),
        "nonfinite": int(numbers.size - finite.size),
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=0)),
        "min": float(finite.min()),
        "p10": float(q.loc[0.1]),
        "median": float(q.loc[0.5]),
        "p90": float(q.loc[0.9]),
        "max": float(finite.max()),
    }
