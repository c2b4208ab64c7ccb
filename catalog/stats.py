"""Catalog statistics: counts per run and score distributions per run and scorer.

``run_stats`` and ``score_stats`` aggregate in DuckDB over the view of a connection from
``winnow.catalog.query.connect`` (the whole catalog, or one run), reading only the columns
they need; only their answers (a row per run, a row per run, score and group) reach pandas.
``describe`` is the same statistics over a pandas Series, for the readers of one run's rows.
"""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd

from winnow.catalog.query import VIEW, score_columns

ALL = "(all runs)"
GROUPS = ("all", "kept", "rejected")
STATS = ("count", "nonfinite", "mean", "std", "min", "p10", "median", "p90", "max")


def run_stats(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per run of the view ``catalog`` of ``con``, then a total row (``run_id`` =
    ``ALL``) when there are several.

    Columns: run_id, source (comma-joined), prompts, candidates, kept (``kept_final``: a
    reviewer's decision where there is one, else the policy's), acceptance (kept /
    candidates, in [0, 1]), images (rows with a saved image file), duplicates (kept rows
    ``winnow dedup`` marked near-duplicates), first/last (created_at).
    """
    # kept rows `winnow dedup` marked near-duplicates of another (0 before it has run)
    duplicates = "count(*) FILTER (WHERE NOT dedup_kept)" if "dedup_kept" in _columns(con) else "0"
    runs = con.sql(
        "SELECT run_id, string_agg(DISTINCT source, ',' ORDER BY source) AS source, "
        "count(DISTINCT prompt_id) AS prompts, count(*) AS candidates, "
        "count(*) FILTER (WHERE kept_final) AS kept, count(image_path) AS images, "
        f"{duplicates} AS duplicates, min(created_at) AS first, max(created_at) AS last "
        f"FROM {VIEW} GROUP BY run_id ORDER BY run_id"
    ).df()
    if len(runs) > 1:
        sources = sorted({s for joined in runs["source"].dropna() for s in joined.split(",")})
        total = {
            "run_id": ALL,
            "source": ",".join(sources),
            **runs[["prompts", "candidates", "kept", "images", "duplicates"]].sum().to_dict(),
            "first": runs["first"].min(),
            "last": runs["last"].max(),
        }
        runs = pd.concat([runs, pd.DataFrame([total])], ignore_index=True)
    for column in ("prompts", "candidates", "kept", "images", "duplicates"):
        runs[column] = runs[column].astype("int64")
    runs["source"] = runs["source"].fillna("")
    runs[["first", "last"]] = runs[["first", "last"]].apply(lambda t: t.dt.tz_convert("UTC"))
    runs.insert(5, "acceptance", runs["kept"] / runs["candidates"])
    return runs


def score_stats(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per run and score column (every ``score_*`` plus ``combined_score``) and group (all,
    kept, rejected; by ``kept_final``): the statistics of ``describe`` (finite values;
    ``nonfinite`` counts the rest), computed by DuckDB one run at a time, so the values the
    quantiles hold are one run's, whatever the catalog's size.

    Scores are in each scorer's own units (higher is better); a scorer that did not run for a
    run (its column is null there) is left out of that run.
    """
    columns = [*score_columns(_columns(con)), "combined_score"]
    sql = _describe_sql(columns)
    records = []
    for (run_id,) in con.sql(f"SELECT DISTINCT run_id FROM {VIEW} ORDER BY run_id").fetchall():
        groups = {group: found for group, *found in con.execute(sql, {"run": run_id}).fetchall()}
        for i, column in enumerate(columns):
            if groups["all"][i]["present"] == 0:
                continue  # every value null (or NaN): the scorer did not run here
            for group in GROUPS:
                found = groups[group][i] if group in groups else _empty()
                p10, median, p90 = found.pop("q", None) or (None, None, None)
                found |= {"p10": p10, "median": median, "p90": p90}
                stats = {k: math.nan if found[k] is None else found[k] for k in STATS}
                records.append({"run_id": run_id, "score": column, "group": group, **stats})
    table = pd.DataFrame.from_records(records, columns=["run_id", "score", "group", *STATS])
    return table.astype({"count": "int64", "nonfinite": "int64"})


def _describe_sql(columns: list[str]) -> str:
    """SQL for ``describe``'s statistics of each of ``columns`` (a struct each, ``q`` the
    p10/median/p90 list) per group (``all`` and, by ``kept_final``, ``kept``/``rejected``) of
    the run ``$run``, plus ``present``: the values neither null nor NaN."""
    inner, structs = [], []
    for i, column in enumerate(columns):
        v, f = f"v{i}", f"f{i}"  # the value, and the value where finite (null otherwise)
        inner.append(f'"{column}"::DOUBLE AS {v}, CASE WHEN isfinite({v}) THEN {v} END AS {f}')
        structs.append(
            f"struct_pack(count := count({f}), nonfinite := count(*) - count({f}), mean := avg({f}), "
            f"std := stddev_pop({f}), min := min({f}), max := max({f}), "
            # quantile_cont interpolates linearly between order statistics, as pandas' quantile
            f"q := quantile_cont({f}, [0.1, 0.5, 0.9]), present := count({v}) FILTER (WHERE NOT isnan({v})))"
        )
    return (
        "SELECT CASE WHEN grouping(kept) = 1 THEN 'all' WHEN kept THEN 'kept' ELSE 'rejected' END, "
        f"{', '.join(structs)} FROM (SELECT coalesce(kept_final, false) AS kept, {', '.join(inner)} "
        f"FROM {VIEW} WHERE run_id = $run) GROUP BY GROUPING SETS ((), (kept))"
    )


def _empty() -> dict:
    return {"count": 0, "nonfinite": 0, **{k: math.nan for k in STATS[2:]}}


def _columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    return con.sql(f"SELECT * FROM {VIEW} LIMIT 0").columns


def describe(values: pd.Series) -> dict:
    """Statistics of the finite values of ``values`` (in the values' own units): count, mean,
    std, min, p10, median, p90, max; NaN when none is finite. ``nonfinite`` counts the values
    left out (NaN: a failed or skipped score; -inf: a combined score that never existed, as for
    pruned or invalid candidates), so a mean is never -inf and never silently drops rows."""
    numbers = values.to_numpy(dtype="float64", na_value=np.nan)
    finite = pd.Series(numbers[np.isfinite(numbers)])
    if finite.empty:
        return {**_empty(), "nonfinite": int(numbers.size)}
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
