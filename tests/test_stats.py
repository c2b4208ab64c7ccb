"""The readers that aggregate in DuckDB (`catalog stats`, the report, `prompt_ids`) give what
a plain pandas computation over every row gives, on a catalog with NaN and -inf scores, a
reviewer's labels, dedup decisions and rescored scores; and the view reads only the columns a
query names."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.catalog.dedup import SCHEMA as DEDUP_SCHEMA
from winnow.catalog.dedup import decisions_path
from winnow.catalog.labels import Decision, write_labels
from winnow.catalog.query import VIEW, connect, prompt_ids, read_catalog
from winnow.catalog.report import render
from winnow.catalog.rescore import write_rescored
from winnow.catalog.schema import Row, candidate_id, table
from winnow.catalog.stats import ALL, run_stats, score_stats
from winnow.catalog.writer import part_path, write_part

T0 = datetime(2025, 1, 1, tzinfo=UTC)
N = 6  # candidates per prompt


def write_run(root: Path, run_id: str, prompts: int, shards: int, scorers: list[str], seed: int) -> None:
    """``prompts`` prompts of ``N`` candidates over ``shards`` parts, random scores with some
    NaN (a failed score) and -inf (an unscorable combined score); the best two kept."""
    rng = np.random.default_rng(seed)
    rows = {s: [] for s in range(shards)}
    for p in range(prompts):
        prompt_id = f"{seed:02x}{p:014x}"
        combined = rng.normal(size=N)
        combined[rng.random(N) < 0.15] = -np.inf
        order = np.argsort(-combined, kind="stable")
        for i in range(N):
            scores = {s: float(v) for s, v in zip(scorers, rng.normal(size=len(scorers)), strict=True)}
            if rng.random() < 0.1:
                scores[scorers[0]] = float("nan")
            rank = int(np.where(order == i)[0][0]) + 1
            shard = p % shards
            rows[shard].append(
                Row(
                    run_id=run_id, source="generated", shard_id=f"{shard:04d}", prompt_id=prompt_id,
                    candidate_id=candidate_id(prompt_id, i), candidate_index=i, prompt=f"prompt {p}",
                    negative_prompt="", prompt_meta="{}", config_hash="h", rank=rank, kept=rank <= 2,
                    reject_reason=None if rank <= 2 else "not_top_k", combined_score=float(combined[i]),
                    image_path=f"images/{run_id}/{i}.png" if rank <= 2 else None,
                    created_at=T0 + timedelta(days=seed, minutes=p), scores=scores,
                )
            )  # fmt: skip
    for shard, part in rows.items():
        write_part(part_path(root, run_id, f"{shard:04d}"), table(part, scorers))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Run ``a`` (clip_score, aesthetic; 4 parts), run ``b`` (clip_score only, its aesthetic
    rescored later; a run where no row has a score_nsfw), run ``c`` (nsfw, every value NaN);
    labels that overrule the policy, dedup decisions on some kept rows."""
    root = tmp_path_factory.mktemp("stats") / "catalog"
    write_run(root, "a", prompts=40, shards=4, scorers=["clip_score", "aesthetic"], seed=1)
    write_run(root, "b", prompts=15, shards=1, scorers=["clip_score"], seed=2)
    write_run(root, "c", prompts=5, shards=1, scorers=["nsfw"], seed=3)
    for part in (root / "runs" / "c").glob("*.parquet"):  # nsfw never scored in c
        rows = pq.read_table(part)
        nan = pa.array([float("nan")] * rows.num_rows)
        write_part(part, rows.set_column(rows.column_names.index("score_nsfw"), "score_nsfw", nan))
    rows = read_catalog(root)
    b = rows[rows["run_id"] == "b"]
    rng = np.random.default_rng(0)
    write_rescored(root, "aesthetic", "b", list(b["candidate_id"]), list(rng.normal(size=len(b))), {})
    a = rows[rows["run_id"] == "a"]
    for decision, some in (("keep", a[~a["kept"]].head(9)), ("reject", a[a["kept"]].head(5))):
        write_labels(
            root, [Decision("a", r.prompt_id, r.candidate_id, decision) for r in some.itertuples()], "x"
        )
    kept = rows[rows["kept"] & (rows["run_id"] != "c")].head(12)
    marked = [i % 3 == 0 for i in range(len(kept))]
    dedup = pa.table(
        {
            "run_id": kept["run_id"], "candidate_id": kept["candidate_id"], "dedup_kept": marked,
            "duplicate_of_run": [None if m else "a" for m in marked],
            "duplicate_of": [None if m else kept["candidate_id"].iloc[0] for m in marked],
            "dedup_cosine": [None if m else 0.99 for m in marked],
        },
        schema=DEDUP_SCHEMA,
    )  # fmt: skip
    write_part(decisions_path(root), dedup)
    return root


def expected_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """describe's statistics per run, score column and group, by plain pandas."""
    records = []
    columns = [*sorted(c for c in rows.columns if c.startswith("score_")), "combined_score"]
    for run, group in rows.groupby("run_id", sort=True):
        kept = group["kept_final"].fillna(False).astype(bool)
        for column in columns:
            values = group[column].astype("float64")
            if values.isna().all():
                continue
            for name, mask in (("all", kept | True), ("kept", kept), ("rejected", ~kept)):
                v = values[mask]
                f = v[np.isfinite(v)]
                records.append(
                    {"run_id": run, "score": column, "group": name, "count": len(f),
                     "nonfinite": len(v) - len(f), "mean": f.mean(), "std": f.std(ddof=0), "min": f.min(),
                     "p10": f.quantile(0.1), "median": f.quantile(0.5), "p90": f.quantile(0.9),
                     "max": f.max()}
                )  # fmt: skip
    return pd.DataFrame.from_records(records)


def test_stats_equal_a_pandas_computation_over_every_row(root):
    rows = read_catalog(root)
    assert rows["human_decision"].value_counts().to_dict() == {"keep": 9, "reject": 5}
    assert rows["dedup_kept"].eq(False).sum() == 8
    assert np.isneginf(rows["combined_score"]).any() and rows["score_clip_score"].isna().any()
    with connect(root) as con:
        runs, scores = run_stats(con), score_stats(con)
    want = expected_scores(rows)
    assert set(want.loc[want["run_id"] == "b", "score"]) == {
        "score_clip_score",
        "score_aesthetic",
        "combined_score",
    }
    assert "score_nsfw" not in set(want["score"])  # NaN in c, absent elsewhere: never scored
    pd.testing.assert_frame_equal(scores, want, check_dtype=False, rtol=1e-12)

    by_run = rows.groupby("run_id")
    kept = rows["kept_final"].fillna(False).astype(bool)
    want_runs = pd.DataFrame(
        {
            "prompts": by_run["prompt_id"].nunique(), "candidates": by_run.size(),
            "kept": kept.groupby(rows["run_id"]).sum(), "images": by_run["image_path"].count(),
            "duplicates": rows["dedup_kept"].eq(False).groupby(rows["run_id"]).sum(),
            "first": by_run["created_at"].min(), "last": by_run["created_at"].max(),
        }
    )  # fmt: skip
    got = runs.set_index("run_id")
    assert list(got.index) == ["a", "b", "c", ALL]
    pd.testing.assert_frame_equal(got.loc[["a", "b", "c"], want_runs.columns], want_runs, check_names=False,
                                  check_dtype=False)  # fmt: skip
    total = got.loc[ALL]
    assert total["candidates"] == len(rows) and total["kept"] == kept.sum() and total["source"] == "generated"
    assert total["prompts"] == rows[["run_id", "prompt_id"]].drop_duplicates().shape[0]
    assert got["acceptance"].to_dict() == pytest.approx((got["kept"] / got["candidates"]).to_dict())

    with connect(root, "b") as con:  # one run: only its parts are read
        one = run_stats(con)
    assert list(one["run_id"]) == ["b"] and one["candidates"].item() == 15 * N


def test_prompt_ids_reads_prompt_ids_only_and_leaves_a_run_out(root, tmp_path):
    rows = read_catalog(root)
    assert prompt_ids(root) == set(rows["prompt_id"])
    assert prompt_ids(root, except_run="a") == set(rows.loc[rows["run_id"] != "a", "prompt_id"])
    assert prompt_ids(root, except_run="nothing") == set(rows["prompt_id"])
    assert prompt_ids(tmp_path / "empty") == set()


def test_the_view_reads_only_the_columns_a_query_names(root):
    with connect(root) as con:
        plan = "\n".join(
            row[1] for row in con.sql(f"EXPLAIN SELECT count(*) FROM {VIEW} WHERE kept_final").fetchall()
        )
        assert con.sql(f"SELECT count(*) FROM {VIEW} WHERE kept_final").fetchall() == [
            (int(read_catalog(root)["kept_final"].sum()),)
        ]
        limit = con.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    scans = re.findall(r"READ_PARQUET.*?Projections:(.*?)(?:Filters|~)", plan, re.S)
    assert scans, plan
    for column in ("prompt", "versions", "prompt_meta", "image_sha256", "score_aesthetic"):
        assert not any(re.search(rf"\b{column}\b", scan) for scan in scans), plan
    assert limit.endswith(("MiB", "GiB")) and float(limit.split()[0]) <= 1024


def test_report_samples_past_its_limit_and_says_so(root):
    rows = read_catalog(root)
    pairs = rows[["run_id", "prompt_id"]].drop_duplicates()
    page = render(root, max_prompts=7)
    assert page.count("<div class='prompt'>") == 7
    assert (
        f"a sample of 7 of {len(pairs)} prompts" in page
        and f"{len(pairs) - 7} more prompts not shown" in page
    )
    shown = set(re.findall(r"prompt ([0-9a-f]{16})", page))
    assert shown == set(pairs.sort_values(["prompt_id", "run_id"])["prompt_id"].head(7))
    whole = render(root, run_id="b", max_prompts=500)
    assert whole.count("<div class='prompt'>") == 15 and "a sample" not in whole
    # histogram bars: their counts add up to the finite values, kept and rejected
    b = rows[rows["run_id"] == "b"]
    kept = b["kept_final"].fillna(False).astype(bool)
    svg = re.search(r"aria-label='clip_score histogram'>(.*?)</svg>", whole, re.S)[1]
    bars = re.findall(r"fill='(#[0-9a-f]+)'><title>(\d+)</title>", svg)
    finite = np.isfinite(b["score_clip_score"].astype(float))
    assert sum(int(n) for colour, n in bars if colour == "#2a9d4b") == (finite & kept).sum()
    assert sum(int(n) for colour, n in bars if colour != "#2a9d4b") == (finite & ~kept).sum()


def read_stats(catalog: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with connect(catalog) as con:
        return run_stats(con), score_stats(con)


def test_a_compacted_run_reads_the_same(root, tmp_path):
    """The compacted layout (a run's parts as one file sorted by prompt) gives the same stats,
    prompt ids and report as the parts."""
    copy = tmp_path / "catalog"
    shutil.copytree(root, copy)
    parts = sorted((copy / "runs" / "a").glob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in parts])
    rows = rows.sort_by([("prompt_id", "ascending"), ("candidate_index", "ascending")])
    pq.write_table(rows, copy / "runs" / "a" / "compacted-00000.parquet", row_group_size=100)
    for part in parts:
        part.unlink()
    for was, now in zip(read_stats(root), read_stats(copy), strict=True):
        pd.testing.assert_frame_equal(was, now)
    assert prompt_ids(copy, except_run="b") == prompt_ids(root, except_run="b")
    page = render(copy, max_prompts=7).replace(str(copy), "")
    assert page == render(root, max_prompts=7).replace(str(root), "")
