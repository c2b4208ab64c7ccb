"""The run summary the CLI prints: statistics over finite scores only (a pruned run has -inf
combined scores), and a note when select.keep leaves the ranking nothing to select."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from tests.helpers import invoke
from winnow.catalog.stats import describe
from winnow.catalog.summary import read_run, score_table
from winnow.pipeline.config import load_config

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def test_describe_leaves_out_and_counts_non_finite_values():
    stats = describe(pd.Series([1.0, -np.inf, 3.0, np.nan, np.inf, 2.0]))
    assert (stats["count"], stats["nonfinite"]) == (3, 3)
    assert (stats["mean"], stats["min"], stats["median"], stats["max"]) == (2.0, 1.0, 2.0, 3.0)
    empty = describe(pd.Series([-np.inf, np.nan]))
    assert (empty["count"], empty["nonfinite"]) == (0, 2) and math.isnan(empty["mean"])


def test_summary_of_a_pruned_run_is_finite_and_agrees_with_catalog_stats(make_config, prefect_harness):
    # drop 0.5 of 4 candidates: 2 per prompt are pruned, their combined score is -inf.
    path = make_config(
        PROMPTS,
        generator={"steps": 4, "batch_size": 4},
        run={"candidates": 4, "shard_size": 3},
        select={"keep": 1},
        prune={"at": 0.5, "drop": 0.5},
    )
    result = invoke("run", path)
    assert result.exit_code == 0, result.output
    assert "inf" not in result.output and "nan" not in result.output
    assert "note:" not in result.output

    config = load_config(path)
    (run_id,) = [p.name for p in (config.run.out / "runs").iterdir()]
    rows = read_run(config.run.out, run_id)
    pruned = rows["reject_reason"].str.startswith("pruned_at_step").sum()
    assert pruned == 6 and np.isneginf(rows["combined_score"]).sum() == pruned

    table = score_table(rows).set_index(["score", "group"])
    assert np.isfinite(table[["mean", "min", "median", "max"]].to_numpy()).all()
    combined = table.loc[("combined_score", "rejected")]
    assert (combined["count"], combined["nonfinite"]) == (3, 6)  # 9 rejected, 6 of them pruned
    rejected = rows.loc[~rows["kept"] & np.isfinite(rows["combined_score"]), "combined_score"]
    assert combined["mean"] == pytest.approx(rejected.mean())
    # `winnow catalog stats` reports the same numbers: one statistics function for both.
    stats = json.loads(invoke("catalog", "stats", config.run.out, "--json").stdout)["scores"]
    same = pd.DataFrame(stats).set_index(["score", "group"]).loc[table.index, table.columns]
    pd.testing.assert_frame_equal(same, table, check_dtype=False)


@pytest.mark.parametrize(
    ("candidates", "keep", "most"),
    [(3, 3, 3), (3, 5, 3), ({"min": 2, "max": 6}, 6, 6), ({"min": 2, "max": 6, "until_kept": 2}, 7, 6)],
)
def test_keep_not_below_the_candidates_is_noted(make_config, candidates, keep, most):
    config = load_config(make_config(run={"candidates": candidates}, select={"keep": keep}))
    assert config.note == (
        f"select.keep {keep} is not below the {most} candidates per prompt: every candidate that "
        "clears the floors and ceilings is kept, the ranking selects nothing"
    )


@pytest.mark.parametrize(("candidates", "keep"), [(3, 2), ({"min": 2, "max": 6}, 4), (3, 0)])
def test_keep_below_the_candidates_has_no_note(make_config, candidates, keep):
    assert load_config(make_config(run={"candidates": candidates}, select={"keep": keep})).note is None


def test_the_run_prints_the_note(make_config, prefect_harness, tmp_path):
    result = invoke("run", make_config(PROMPTS[:1]), "-n", "2", "--keep", "3", "--out", tmp_path / "c")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: select.keep 3 is not below the 2 candidates per prompt: every candidate that clears the "
        "floors and ceilings is kept, the ranking selects nothing"
    ]
    rows = pd.read_parquet(tmp_path / "c" / "runs")
    assert len(rows) == 2 and rows["kept"].all()
