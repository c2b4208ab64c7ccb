"""End to end: the Prefect flow on tiny random models writes a complete, readable catalog."""

import hashlib
import math
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from winnow.catalog.schema import SCHEMA_VERSION
from winnow.catalog.writer import encode_png
from winnow.flows.cli import app
from winnow.flows.curate import run_curate
from winnow.models.sources import resolve
from winnow.pipeline.config import load_config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.regenerate import regenerate
from winnow.pipeline.shard import default_run_id

PROMPTS = ["a red circle", "a blue square on a white background", "a cat", "a dog", "a tree"]


@pytest.fixture
def finished_run(make_config, prefect_harness):
    config = load_config(make_config(PROMPTS))
    summary = run_curate(config)
    return config, summary, pd.read_parquet(Path(config.run.out) / "runs")


def test_catalog_content(finished_run):
    config, summary, rows = finished_run
    n, k = config.run.candidates, config.select.keep
    assert len(rows) == len(PROMPTS) * n == summary.candidates
    assert rows["prompt_id"].nunique() == len(PROMPTS) == summary.prompts
    assert (rows.groupby("prompt_id")["kept"].sum() == k).all()
    assert summary.kept == len(PROMPTS) * k
    assert rows["seed"].is_unique and rows["candidate_id"].is_unique
    assert (rows["schema_version"] == SCHEMA_VERSION).all()
    for column in ("score_clip_score", "score_aesthetic", "combined_score"):
        assert rows[column].map(math.isfinite).all(), column
    assert rows["reject_reason"].isna().eq(rows["kept"]).all()
    assert set(rows.loc[~rows["kept"], "reject_reason"]) <= {"not_top_k"}
    assert sorted(rows.groupby("prompt_id")["rank"].apply(sorted).iloc[0]) == list(range(1, n + 1))
    assert rows["shard_id"].nunique() == math.ceil(len(PROMPTS) / config.run.shard_size)
    assert set(rows["config_hash"]) == {config.result_hash()}
    assert (rows["model"] == config.generator.model).all()


def test_kept_images_exist_decode_and_match_their_hash(finished_run):
    config, _, rows = finished_run
    root = Path(config.run.out)
    kept = rows[rows["kept"]]
    for row in kept.itertuples():
        data = (root / row.image_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.image_sha256
        with Image.open(root / row.image_path) as img:
            assert img.size == (row.width, row.height)
        assert Path(row.image_path).name == f"{row.candidate_id}.png"  # names from ids only
    assert rows.loc[~rows["kept"], "image_path"].isna().all()
    assert not list(root.rglob(".*.tmp"))


def test_catalog_reads_back_with_plain_tools(finished_run):
    config, _, rows = finished_run
    root = Path(config.run.out)
    table = pq.read_table(root / "runs")
    assert table.num_rows == len(rows)
    part = next((root / "runs").rglob("*.parquet"))
    assert pq.read_schema(part).metadata[b"winnow.schema_version"] == str(SCHEMA_VERSION).encode()
    query = f"select count(*) from read_parquet('{root}/runs/*/*.parquet') where kept"
    assert duckdb.sql(query).fetchall() == [(rows["kept"].sum(),)]


def test_regenerating_a_row_gives_identical_pixels(finished_run):
    config, _, rows = finished_run
    root = Path(config.run.out)
    # a kept candidate from a padded batch (last call of a shard) and one from a full batch
    for row in (rows[rows["kept"]].iloc[0], rows[rows["kept"]].iloc[-1]):
        shard = rows[(rows["run_id"] == row["run_id"]) & (rows["shard_id"] == row["shard_id"])]
        pixels = regenerate(shard, row["candidate_id"])
        with Image.open(root / row["image_path"]) as img:
            np.testing.assert_array_equal(pixels, np.asarray(img.convert("RGB")))
        assert hashlib.sha256(encode_png(pixels)).hexdigest() == row["image_sha256"]


def test_rerun_skips_finished_shards(finished_run):
    config, first, rows = finished_run
    again = run_curate(config)
    assert again.run_id == first.run_id
    assert again.skipped_shards == again.shards and again.generated == 0
    assert pd.read_parquet(Path(config.run.out) / "runs").equals(rows)


def test_run_id_changes_with_the_model_weights(make_config, tiny_sd, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_sd, weights)
    config = load_config(make_config(generator={"model": str(weights)}))
    prompts = read_prompts(config.prompts.path)
    before = default_run_id(config, prompts)
    unet = next((weights / "unet").glob("*.safetensors"))
    unet.write_bytes(unet.read_bytes()[:-1] + b"\0")  # a retrained model at the same path
    resolve.cache_clear()
    assert default_run_id(config, prompts) != before


def test_cli_run_shows_progress_and_summary(make_config, prefect_harness, tmp_path):
    config = make_config(PROMPTS[:2])
    out = tmp_path / "cli-catalog"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "-n", "2", "--keep", "1"])
    assert result.exit_code == 0, result.output
    for text in ("prompts", "candidates", "kept", "images/s", "wall time", str(out), "kept vs rejected"):
        assert text in result.output
    rows = pd.read_parquet(out / "runs")
    assert len(rows) == 4 and rows["kept"].sum() == 2
    assert list(out.glob("contact-sheet-*.png"))
