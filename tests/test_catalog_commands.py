"""`winnow catalog stats|query` and `winnow regenerate` over a catalog whose runs have different
columns: an "old" run written before ``source`` existed (schema v1) with one scorer, and a
"new" run with two scorers that saved its rejected images too."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import invoke, run_shards
from winnow.catalog.query import VIEW, CatalogError, connect, part_files, read_catalog
from winnow.pipeline.config import Config
from winnow.pipeline.regenerate import check_row

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def build_run(root: Path, sd: Path, clip, head: Path, run_id: str, scorers: list[str], **run) -> None:
    """Write one run into the catalog at ``root`` with ``process_shard`` (no Prefect)."""
    prompt_file = root.parent / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n")
    spec = {"model": str(clip.model), "pretrained": str(clip.pretrained)}
    available = {"clip_score": {"clip": spec}, "aesthetic": {"clip": spec, "head": str(head)}}
    config = Config.model_validate(
        {
            "prompts": {"path": str(prompt_file)},
            "generator": {"model": str(sd), "steps": 2, "batch_size": 4, "guidance": 3.0},
            "scorers": {name: available[name] for name in scorers},
            "select": {"keep": 1},
            "run": {"out": str(root), "run_id": run_id, "candidates": 3, "shard_size": 2, **run},
        }
    )
    run_shards(config, run_id)


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_sd, tiny_clip, tiny_head) -> Path:
    root = tmp_path_factory.mktemp("catalog-commands") / "catalog"
    build_run(root, tiny_sd, tiny_clip, tiny_head, "old", ["clip_score"])
    for part in part_files(root, "old"):  # as a catalog written before schema version 2
        table = pq.read_table(part).drop_columns(["source"])
        version = pa.array([1] * table.num_rows, pa.int16())
        pq.write_table(table.set_column(0, table.schema.field(0), version), part)
    build_run(root, tiny_sd, tiny_clip, tiny_head, "new", ["clip_score", "aesthetic"], save_rejected=True)
    return root


def test_runs_with_different_columns_read_as_one_table(root):
    assert "source" not in pq.read_schema(part_files(root, "old")[0]).names
    assert "score_aesthetic" not in pq.read_schema(part_files(root, "old")[0]).names
    rows = read_catalog(root)
    assert len(rows) == 2 * len(PROMPTS) * 3
    old, new = rows[rows["run_id"] == "old"], rows[rows["run_id"] == "new"]
    assert old["score_aesthetic"].isna().all() and new["score_aesthetic"].notna().all()
    assert (rows["source"] == "generated").all()  # v1 rows are all generated
    with connect(root) as con:
        by_run = con.sql(
            f"select run_id, count(score_aesthetic), count(*), min(source) from {VIEW} group by 1 order by 1"
        ).fetchall()
    assert by_run == [("new", 9, 9, "generated"), ("old", 0, 9, "generated")]


def test_stats_counts_and_score_distributions_per_run(root):
    result = invoke("catalog", "stats", root, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    runs = {r["run_id"]: r for r in data["runs"]}
    assert runs["new"]["candidates"] == 9 and runs["new"]["kept"] == 3 and runs["new"]["prompts"] == 3
    assert runs["new"]["images"] == 9 and runs["old"]["images"] == 3  # save_rejected vs not
    assert runs["(all runs)"]["candidates"] == 18
    assert runs["old"]["acceptance"] == pytest.approx(1 / 3)
    scores = pd.DataFrame(data["scores"])
    assert set(scores.loc[scores["run_id"] == "old", "score"]) == {"score_clip_score", "combined_score"}
    assert set(scores.loc[scores["run_id"] == "new", "score"]) == {
        "score_clip_score",
        "score_aesthetic",
        "combined_score",
    }
    rows = read_catalog(root, "new")
    kept_mean = scores.query("run_id == 'new' and score == 'score_aesthetic' and group == 'kept'")["mean"]
    assert kept_mean.item() == pytest.approx(rows.loc[rows["kept"], "score_aesthetic"].mean())
    table = invoke("catalog", "stats", root)
    assert table.exit_code == 0 and "acceptance" in table.stdout and "33.3%" in table.stdout


def test_query_formats(root, tmp_path):
    sql = "select run_id, count(*) as n, sum(kept::int) as kept from catalog group by 1 order by 1"
    table = invoke("catalog", "query", root, sql)
    assert table.exit_code == 0 and "old" in table.stdout and "new" in table.stdout
    csv = invoke("catalog", "query", root, sql, "--format", "csv")
    assert pd.read_csv(io.StringIO(csv.stdout)).to_dict("list") == {
        "run_id": ["new", "old"],
        "n": [9, 9],
        "kept": [3, 3],
    }
    as_json = invoke(
        "catalog", "query", root, "select candidate_id, created_at from catalog", "--format", "json"
    )
    assert len(json.loads(as_json.stdout)) == 18
    missing = invoke("catalog", "query", root, sql, "--format", "parquet")
    assert missing.exit_code == 2 and "error: --format parquet needs --out" in missing.output
    out = tmp_path / "q.parquet"
    assert invoke("catalog", "query", root, sql, "--format", "parquet", "--out", out).exit_code == 0
    assert pq.read_table(out).num_rows == 2
    bad = invoke("catalog", "query", root, "select nope from catalog")
    assert bad.exit_code == 2 and bad.output.startswith("error: query failed:")
    assert len(bad.output.strip().splitlines()) == 1
    nowhere = invoke("catalog", "query", tmp_path / "empty", "select 1")
    assert nowhere.exit_code == 2 and "no catalog parts found" in nowhere.output
    # the view reads only finished parts: a writer's temp file beside them is invisible
    stale = part_files(root, "new")[0].with_name(".shard-00009.parquet.99999999.tmp")
    stale.write_bytes(b"PAR1 half a part")
    try:
        glob = f"read_parquet('{root}/runs/*/*.parquet', union_by_name=true)"
        assert duckdb.sql(f"select count(*) from {glob}").fetchall() == [(18,)]
        assert len(read_catalog(root)) == 18 and pq.read_table(root / "runs" / "new").num_rows == 9
    finally:
        stale.unlink()


def test_regenerate_checks_the_stored_hash(root, tmp_path):
    rows = read_catalog(root, "new")
    kept = rows[rows["kept"]].iloc[-1]
    ok = invoke("regenerate", root, kept["candidate_id"], "--run", "new", "--out", tmp_path / "r.png")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith(f"match: {kept['candidate_id']}")
    assert (tmp_path / "r.png").read_bytes() == (root / kept["image_path"]).read_bytes()

    ambiguous = invoke("regenerate", root, kept["candidate_id"])  # both runs have this id
    assert ambiguous.exit_code == 2 and "pick one with --run" in ambiguous.output
    unknown = invoke("regenerate", root, "0000000000000000-000", "--run", "new")
    assert unknown.exit_code == 2 and unknown.output.startswith("error: candidate")

    part = root / "runs" / "new" / f"shard-{kept['shard_id']}.parquet"
    original = pq.read_table(part)
    df = original.to_pandas()
    df.loc[df["candidate_id"] == kept["candidate_id"], "image_sha256"] = "0" * 64
    pq.write_table(pa.Table.from_pandas(df, schema=original.schema, preserve_index=False), part)
    try:
        bad = invoke("regenerate", root, kept["candidate_id"], "--run", "new")
        assert bad.exit_code == 1 and bad.stdout.startswith("mismatch:")
    finally:
        pq.write_table(original, part)


def test_regenerate_reads_only_the_rows_it_needs(root):
    """The row is found by predicate and, with a run, only that run's parts are opened: an
    unreadable part of another run does not stop it (without a run every part is searched)."""
    rows = read_catalog(root, "new")
    kept = rows[rows["kept"]].iloc[0]
    broken = root / "runs" / "broken" / "shard-00000.parquet"
    broken.parent.mkdir()
    broken.write_bytes(b"PAR1 not a part")
    try:
        check = check_row(root, kept["candidate_id"], "new")
        assert check.match and (check.run_id, check.candidate_id) == ("new", kept["candidate_id"])
        with pytest.raises(CatalogError, match="cannot read the catalog"):
            check_row(root, kept["candidate_id"])
    finally:
        shutil.rmtree(broken.parent)


def test_a_file_system_error_is_one_line_with_status_1(root, tmp_path):
    (tmp_path / "file").write_text("")
    result = invoke("report", root, "--out", tmp_path / "file" / "report.html")  # a file as a folder
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: [Errno") and str(tmp_path / "file") in line
