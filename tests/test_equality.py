"""Behaviour is kept across refactors: a catalog written by an earlier commit, committed under
``tests/fixtures/before/``, equals one written now from the same config, prompts and images.

The fixture holds a generated run (4 prompts x 4 candidates, 2 shards, bundled shapes models)
and a ``winnow score`` run over 8 images with sidecar prompts, written into one catalog.
Compared: run ids, ids, seeds, kept set, ranks, reasons and image bytes (sha256) exactly;
scores to 1e-5. Timings, creation times and versions may differ. Written with one torch thread, as
the tests run (pixels can differ in the last bit with another thread count).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from winnow.catalog.schema import SCHEMA_VERSION

BEFORE = Path(__file__).parent / "fixtures" / "before"
VOLATILE = ["created_at", "generation_seconds", "scoring_seconds", "versions"]
# Columns added since the fixture was written (schema version 3), and what the fixture's rows
# hold in them now: nothing (the shapes pipeline has no safety checker).
ADDED = {"safety_flagged": None}


def _rows(runs: Path) -> pd.DataFrame:
    # Parts, or the files a finished run was compacted into (run.compact): the rows are the same.
    frames = [pd.read_parquet(part) for part in sorted(runs.glob("*/*.parquet"))]
    rows = pd.concat(frames, ignore_index=True).drop(columns=VOLATILE)
    return rows.sort_values(["run_id", "candidate_id"]).reset_index(drop=True)


@pytest.mark.usefixtures("prefect_harness")
def test_a_catalog_written_now_equals_the_one_written_before(tmp_path: Path, monkeypatch) -> None:
    from winnow.flows.cli import app

    for name in ("config.yaml", "prompts.txt"):
        shutil.copy(BEFORE / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)  # the config's paths are relative to where winnow runs
    runner = CliRunner()
    made = runner.invoke(app, ["run", "config.yaml"])
    assert made.exit_code == 0, made.output
    scored = runner.invoke(app, ["score", str(BEFORE / "images"), "--config", "config.yaml"])
    assert scored.exit_code == 0, scored.output

    before, now = _rows(BEFORE / "runs"), _rows(tmp_path / "catalog" / "runs")
    assert (now["schema_version"] == SCHEMA_VERSION).all() and (before["schema_version"] == 3).all()
    for column, value in ADDED.items():
        assert now[column].isna().all() if value is None else (now[column] == value).all(), column
    now, before = now.drop(columns=["schema_version", *ADDED]), before.drop(columns="schema_version")
    assert list(now.columns) == list(before.columns)
    scores = [c for c in before.columns if c.startswith("score_") or c == "combined_score"]
    pd.testing.assert_frame_equal(now.drop(columns=scores), before.drop(columns=scores))
    pd.testing.assert_frame_equal(now[scores], before[scores], check_exact=False, atol=1e-5, rtol=0)
