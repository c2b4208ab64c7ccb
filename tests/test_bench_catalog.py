"""The catalog-at-scale bench at toy size: the synthetic catalog is a winnow catalog (its rows,
parts, manifests and compaction), and the runner records a command's time and memory and
kills one past its cap. Timings are not asserted."""

import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.catalog_scale import measure
from bench.catalog_synth import build
from winnow.catalog.compact import compact_catalog
from winnow.catalog.manifest import read_manifest
from winnow.catalog.query import part_files, prompt_ids, read_table
from winnow.pipeline.prompts import prompt_id


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "catalog"
    info = build(root, rows=2_400, runs=3, part_rows=128, seed=7)
    return root, info


def test_synthetic_catalog_is_a_winnow_catalog(synth):
    root, info = synth
    rows = read_table(root)
    assert rows.num_rows == info["rows"] == 2_400 and info["prompts"] == 300
    assert len(part_files(root)) == info["parts"] == 3 * 7  # 800 rows a run in parts of 128
    assert all(pq.read_metadata(p).num_rows <= 128 for p in part_files(root))
    assert pq.ParquetFile(part_files(root)[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    frame = rows.to_pandas()
    assert frame.groupby(["run_id", "prompt_id"])["kept"].sum().eq(2).all()  # top 2 of 8
    kept = frame[frame["kept"]]
    assert kept["rank"].le(2).all() and kept["image_path"].notna().all()
    assert kept["reject_reason"].isna().all()
    assert frame.loc[~frame["kept"], "image_path"].isna().all()
    assert (frame["reject_reason"].dropna() == "not_top_k").all()
    first = frame.iloc[0]
    assert first["prompt_id"] == prompt_id(first["prompt"], "")
    assert first["candidate_id"] == f"{first['prompt_id']}-{first['candidate_index']:03d}"
    assert frame["prompt_id"].nunique() == 300 and prompt_ids(root) == set(frame["prompt_id"])
    for run, group in frame.groupby("run_id"):  # regenerate checks rows against their run's manifest
        manifest = read_manifest(root, run)
        assert set(group["config_hash"]) == {manifest.config_hash}
        assert set(group["model_fingerprint"]) == {manifest.models["generator.model"].fingerprint}
        assert manifest.prompts.prompts * 8 == len(group)


def test_synthetic_catalog_is_deterministic(synth, tmp_path):
    root, _ = synth
    again = tmp_path / "again"
    build(again, rows=2_400, runs=3, part_rows=128, seed=7)
    assert read_table(again).equals(read_table(root))


def test_synthetic_runs_are_finished_so_compaction_takes_them(synth, tmp_path):
    root, _ = synth
    rows = read_table(root).num_rows
    done = list(compact_catalog(root))
    assert [d.skipped for d in done] == [None, None, None]
    assert len(part_files(root)) == 3 and read_table(root).num_rows == rows
    assert pc.all(pc.equal(read_table(root)["schema_version"], 4)).as_py()


def test_measure_records_time_memory_and_kills_past_the_cap(tmp_path):
    quick = measure([sys.executable, "-c", "x = bytearray(50 * 2**20)"], tmp_path, 2**34, 60)
    assert quick["rc"] == 0 and quick["peak_mb"] >= 50 and quick["seconds"] > 0 and "killed" not in quick
    assert len(quick["load_before"]) == 3
    grows = "import time\nx = []\nwhile True:\n    x.append(bytearray(2**24)); time.sleep(0.01)"
    killed = measure([sys.executable, "-c", grows], tmp_path, 300 * 2**20, 60)
    assert killed["killed"].startswith("memory >") and killed["rc"] != 0
    slow = measure([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, 2**34, 1)
    assert slow["killed"] == "time > 1 s" and slow["seconds"] < 30
