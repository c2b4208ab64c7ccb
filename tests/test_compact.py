"""Compaction of finished runs (``winnow.catalog.compact``, ``winnow catalog compact``, and the
end of a run): the same rows before and after, resume, kill safety, readers and writers at the
same time, and a real run that ends compacted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import invoke, run_shards
from winnow.catalog import compact, stats
from winnow.catalog import query as query_module
from winnow.catalog.compact import STATE, WORK, compact_run
from winnow.catalog.embeddings import load
from winnow.catalog.labels import Decision, write_labels
from winnow.catalog.manifest import external_manifest, write_manifest
from winnow.catalog.query import CatalogError, connect
from winnow.catalog.schema import Row, candidate_id, table
from winnow.catalog.writer import part_path, write_part
from winnow.flows.ray_runner import RayRunnerError, check_parts_visible
from winnow.pipeline.config import load_config
from winnow.pipeline.prompt_source import choose_prompts
from winnow.pipeline.shard import plan_shards, process_shard

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SORT = [("run_id", "ascending"), ("prompt_id", "ascending"), ("candidate_index", "ascending")]


def write_run(
    root: Path, run_id: str, prompts: int, shard_size: int = 2, n: int = 3, scorers=("clip_score",), old=()
) -> int:
    """A synthetic finished run: ``prompts`` prompts of ``n`` candidates in shards of
    ``shard_size``, with a manifest; the shards in ``old`` are written as schema version 1
    (no ``source`` column, the first scorer missing). Returns its rows."""
    write_manifest(
        root, external_manifest(run_id, {"run": {"shard_size": shard_size}}, "h", root, "sidecar", prompts)
    )
    for s in range(0, prompts, shard_size):
        shard = f"{s // shard_size:05d}"
        rows = []
        for p in range(s, min(s + shard_size, prompts)):
            prompt_id = f"{(p * 7919) % 65536:016x}"  # not in shard order: the sort is visible
            for i in range(n):
                rows.append(
                    Row(
                        run_id=run_id, source="external", shard_id=shard, prompt_id=prompt_id,
                        candidate_id=candidate_id(prompt_id, i), candidate_index=n - 1 - i if p % 2 else i,
                        prompt=f"prompt {p}", negative_prompt="", prompt_meta="{}", config_hash="h",
                        rank=i + 1, kept=i == 0, reject_reason=None if i == 0 else "not_top_k",
                        combined_score=1.0 - i / 10, created_at=T0, scoring_seconds=0.01 * i,
                        scores={name: 0.5 - i / 100 for name in scorers},
                    )
                )  # fmt: skip
        part = table(rows, scorers)
        if shard in old:
            part = part.drop_columns(["source", f"score_{scorers[0]}"])
            part = part.set_column(0, "schema_version", pa.array([1] * part.num_rows, pa.int16()))
        write_part(part_path(root, run_id, shard), part)
    return prompts * n


def run_rows(root: Path, run_id: str) -> pa.Table:
    """Every row readers see of ``run_id`` (its data files, unified by name), in sort order."""
    files = sorted(p for p in (root / "runs" / run_id).glob("*.parquet") if not p.name.startswith((".", "_")))
    tables = [pq.read_table(p) for p in files]
    return pa.concat_tables(tables, promote_options="permissive").sort_by(SORT).replace_schema_metadata()


def all_rows(root: Path) -> dict[str, pa.Table]:
    return {run.name: run_rows(root, run.name) for run in sorted((root / "runs").iterdir())}


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    root = tmp_path / "catalog"
    write_run(root, "a", prompts=5)
    write_run(root, "b", prompts=4, shard_size=1, scorers=("aesthetic", "clip_score"))
    write_run(root, "mixed", prompts=6, scorers=("aesthetic", "clip_score"), old={"00000"})
    return root


def test_rows_are_the_same_before_and_after_in_sorted_files(catalog, monkeypatch):
    monkeypatch.setattr(compact, "ROW_GROUP_ROWS", 4)
    monkeypatch.setattr(compact, "FILE_ROWS", 8)
    before = all_rows(catalog)
    assert "source" not in pq.read_schema(part_path(catalog, "mixed", "00000")).names  # an older schema
    results = {r.run_id: r for r in compact.compact_catalog(catalog)}
    assert {r: (x.skipped, x.parts, x.rows) for r, x in results.items()} == {
        "a": (None, 3, 15),
        "b": (None, 4, 12),
        "mixed": (None, 3, 18),
    }
    after = all_rows(catalog)
    for run_id, rows in before.items():
        assert after[run_id].schema == rows.schema, run_id  # types, timestamps with tz, nullability
        assert after[run_id].equals(rows), run_id

    folder = catalog / "runs" / "a"
    state = json.loads((folder / STATE).read_text())
    assert state["shards"] == ["00000", "00001", "00002"] and state["rows"] == 15
    assert state["files"] == ["compacted-00000.parquet", "compacted-00001.parquet"]
    expected = [*state["files"], STATE, "_manifest.json", stats.CACHE]
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    first = pq.ParquetFile(folder / state["files"][0])
    assert first.metadata.num_rows == 8 and first.metadata.num_row_groups == 2
    assert first.metadata.row_group(0).column(0).compression == "ZSTD"
    written = pa.concat_tables([pq.read_table(folder / f) for f in state["files"]])
    keys = list(zip(written["prompt_id"].to_pylist(), written["candidate_index"].to_pylist(), strict=True))
    assert keys == sorted(keys)  # in file order, not only as a set
    mixed = pq.read_table(catalog / "runs" / "mixed").to_pandas()  # pandas over the folder, too
    assert mixed["source"].isna().sum() == 6 and mixed["score_aesthetic"].isna().sum() == 6
    assert not list((catalog / WORK).glob(f"*{os.getpid()}*"))  # nothing of this process left


def test_a_compacted_run_is_skipped_and_unfinished_runs_are_listed(catalog):
    (part_path(catalog, "a", "00001")).unlink()  # run a is not finished
    result = invoke("catalog", "compact", catalog)
    assert result.exit_code == 0, result.output
    assert "run a: skipped (unfinished (2 of 3 shards written))" in result.output
    assert "compacted 2 runs: 7 parts -> 2 files, 30 rows" in result.output
    again = invoke("catalog", "compact", catalog, "--run", "b")
    assert "run b: skipped (already compacted)" in again.output and "compacted 0 runs" in again.output
    assert invoke("catalog", "compact", catalog, "--run", "../x").exit_code == 2  # not a run id


def test_a_swap_this_file_system_cannot_do_changes_nothing(catalog, monkeypatch):
    before = all_rows(catalog)
    monkeypatch.setattr(compact, "_RENAME_EXCHANGE", 1 << 30)  # a flag the kernel refuses: EINVAL
    with pytest.raises(compact.CompactError, match="nothing was changed"):
        compact_run(catalog, "a")
    assert all_rows(catalog) == before and not (catalog / "runs" / "a" / STATE).exists()
    assert not list((catalog / WORK).iterdir())
    warning = compact.compact_finished(catalog, "a")  # at the end of a run: a warning, not an error
    assert warning.startswith("run a was not compacted (its parts are intact): cannot swap")


def test_killed_mid_compaction_the_catalog_reads_the_same_and_the_next_one_finishes(catalog):
    before = all_rows(catalog)
    script = "import sys; from winnow.catalog.compact import compact_run; compact_run(sys.argv[1], 'mixed')"
    env = {**os.environ, "WINNOW_COMPACT_PAUSE_BEFORE_SWAP": "60"}
    child = subprocess.Popen([sys.executable, "-c", script, str(catalog)], env=env)
    built = catalog / WORK / f"mixed.{child.pid}"
    deadline = time.monotonic() + 60
    while not list(built.parent.glob(f"{built.name}.*/{STATE}")) and time.monotonic() < deadline:
        assert child.poll() is None
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert list(built.parent.glob(f"{built.name}.*/compacted-00000.parquet"))  # killed after writing
    assert all_rows(catalog) == before  # runs/mixed is the old folder, whole
    result = compact_run(catalog, "mixed")
    assert result.skipped is None and result.rows == 18
    assert not list(built.parent.glob(f"{built.name}.*"))  # the dead process's folder is gone
    assert all_rows(catalog) == before


def test_readers_counting_while_runs_compact_never_see_twice_or_none(catalog):
    for k in range(8):
        write_run(catalog, f"more{k}", prompts=20, shard_size=1)
    total = sum(t.num_rows for t in all_rows(catalog).values())
    counts, errors, stop = [], [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                with connect(catalog) as con:
                    counts.append(con.sql("SELECT count(*) FROM catalog").fetchall()[0][0])
            except Exception as err:  # a file gone between the glob and its read
                errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    while not counts and reader.is_alive() and not errors:
        time.sleep(0.01)  # the reader has read the parts once
    try:
        results = list(compact.compact_catalog(catalog))
    finally:
        stop.set()
        reader.join()
    print(f"\nreader: {len(counts)} counts, {len(errors)} errors while {len(results)} runs compacted")
    # A query that listed the old folder's files before the swap may find one gone: that
    # error, and only that one, is allowed (docs/catalog.md says so).
    assert all("No such file" in str(e) for e in errors), errors[:1]
    assert all(r.skipped is None for r in results)
    assert counts and set(counts) == {total}
    with connect(catalog) as con:
        assert con.sql("SELECT count(*) FROM catalog").fetchall()[0][0] == total


@pytest.mark.parametrize("message, attempts", [("No such file or directory", 2), ("Permission denied", 1)])
def test_a_query_that_finds_a_part_gone_runs_once_more(catalog, monkeypatch, message, attempts):
    """DuckDB lists a query's files when it binds it and reads them after: a run compacted in
    between leaves a listed part gone (the reader test above catches it at random; here the
    error is made to happen). That error, and only that one, gets a second attempt."""
    total = sum(t.num_rows for t in all_rows(catalog).values())
    opened = []

    class PartGone:  # the first connection's query meets the error
        def __init__(self, con):
            self.con = con

        def sql(self, sql):
            raise duckdb.IOException(f"IO Error: {message}: runs/b/shard-00000.parquet")

        def close(self):
            self.con.close()

    def connect_once_gone(root, run_id=None):
        opened.append(connect(root, run_id))
        return PartGone(opened[-1]) if len(opened) == 1 else opened[-1]

    monkeypatch.setattr(query_module, "connect", connect_once_gone)
    if attempts == 1:
        with pytest.raises(CatalogError, match="Permission denied"):
            query_module.query(catalog, "SELECT count(*) AS n FROM catalog")
    else:
        assert query_module.query(catalog, "SELECT count(*) AS n FROM catalog")["n"].to_pylist() == [total]
    assert len(opened) == attempts


def test_a_compacted_run_keeps_its_score_statistics_until_labels_or_a_rescore_touch_it(catalog):
    with connect(catalog) as con:
        computed = stats.score_stats(con)
    list(compact.compact_catalog(catalog))
    assert all((catalog / "runs" / run / stats.CACHE).exists() for run in ("a", "b", "mixed"))
    with connect(catalog) as con:
        pd.testing.assert_frame_equal(stats.score_stats(con, catalog), computed)

    def doctor(run: str, **changes) -> None:  # so that reading the cache shows
        path = catalog / "runs" / run / stats.CACHE
        data = json.loads(path.read_bytes())
        data["records"][0]["mean"] = 123.0
        path.write_text(json.dumps(data | changes))

    doctor("a")
    with connect(catalog) as con:
        assert stats.score_stats(con, catalog).query("run_id == 'a'")["mean"].iloc[0] == 123.0
    doctor("b", compacted_at="an earlier compaction")  # a stale cache is not read
    first = run_rows(catalog, "a").slice(0, 1).to_pylist()[0]
    write_labels(catalog, [Decision("a", first["prompt_id"], first["candidate_id"], "reject")], "x")
    with connect(catalog) as con:  # a's labels change its kept_final: computed afresh, as b
        pd.testing.assert_frame_equal(stats.score_stats(con, catalog), stats.score_stats(con))
        assert 123.0 not in stats.score_stats(con, catalog)["mean"].to_list()


def test_runs_compact_at_the_same_time_in_threads_and_processes(catalog):
    before = all_rows(catalog)
    script = "import sys; from winnow.catalog.compact import compact_run; compact_run(sys.argv[1], 'mixed')"
    child = subprocess.Popen([sys.executable, "-c", script, str(catalog)])
    with ThreadPoolExecutor(3) as pool:  # b twice: one compacts it, the other skips
        results = list(pool.map(lambda run: compact_run(catalog, run), ["a", "b", "b"]))
    assert child.wait() == 0
    assert results[0].skipped is None
    assert sorted(r.skipped or "" for r in results[1:]) == ["", "already compacted"]  # in turn
    assert not (catalog / WORK).exists()  # nothing left beside the runs
    assert all_rows(catalog) == before
    for run in before:
        folder = catalog / "runs" / run
        assert (folder / STATE).exists() and not list(folder.glob("shard-*"))


def test_resume_of_a_compacted_run_makes_nothing_and_finds_its_embeddings(tmp_path, make_config):
    config = load_config(make_config(prompts=["a red circle", "a blue square", "a cat"]))
    rows = run_shards(config, "run")
    root = Path(config.run.out)
    plans = plan_shards("run", choose_prompts(config).prompts, config.run.shard_size)

    # A concurrent resume of the run writes shard 1 and compacts the run while this one makes
    # shard 1 too: this one does not write a second copy of its rows.
    part = part_path(root, "run", "00001")
    aside = part.read_bytes()
    part.unlink()

    def other_resumer_finishes(done: int, more: int) -> None:
        if not (root / "runs" / "run" / STATE).exists():
            part.write_bytes(aside)
            assert compact_run(root, "run").parts == 2

    late = process_shard(config, plans[1], on_progress=other_resumer_finishes)
    assert late.skipped and late.part == str(root / "runs" / "run" / STATE)
    assert (late.candidates, late.kept) == (3, 2)
    assert not part.exists() and run_rows(root, "run").num_rows == len(rows)
    check_parts_visible([str(part)])  # in the compacted files: visible
    with pytest.raises(RayRunnerError, match="not visible"):
        check_parts_visible([str(part_path(root, "run", "00002"))])

    assert compact_run(root, "run").skipped == "already compacted"
    again = [process_shard(config, plan) for plan in plans]
    assert all(r.skipped for r in again)
    assert (sum(r.candidates for r in again), sum(r.kept for r in again)) == (len(rows), rows["kept"].sum())
    assert not list((root / "runs" / "run").glob("shard-*.parquet"))  # nothing written again
    keys = list(zip(rows["run_id"], rows["shard_id"], rows["candidate_id"], strict=True))
    found, vectors = load(root, keys)
    assert found.all() and len(vectors) == len(rows)  # the stored embeddings, hard-linked


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_ends_compacted_unless_run_compact_is_off(tmp_path, write_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path)
    result = invoke("run", path)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "catalog" / "runs").iterdir()
    assert sorted(p.name for p in run.glob("*.parquet")) == ["compacted-00000.parquet"]
    kept = pc.sum(pq.read_table(run / "compacted-00000.parquet")["kept"]).as_py()
    assert kept == 3 * 2 and json.loads((run / STATE).read_text())["shards"] == ["00000", "00001"]

    data = yaml.safe_load(path.read_text())
    data["run"] |= {"compact": False, "out": str(tmp_path / "parts")}
    path.write_text(yaml.safe_dump(data))
    assert invoke("run", path).exit_code == 0
    (run,) = (tmp_path / "parts" / "runs").iterdir()
    assert sorted(p.name for p in run.glob("*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
