"""`winnow score`: existing images scored with a config's scorers and policy, cataloged as
``source = 'external'``; bad files are listed and skipped, never fatal."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from winnow.catalog.manifest import read_manifest
from winnow.catalog.query import read_catalog
from winnow.catalog.report import render
from winnow.flows.cli import app
from winnow.pipeline.images import find_images


def noise(path: Path, size: tuple[int, int], seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_score_folder_with_sidecars(make_config, tmp_path):
    folder = tmp_path / "earlier"
    for i, (name, size) in enumerate([("cats/cat1.png", (16, 16)), ("cats/cat2.png", (24, 24)),
                                      ("cats/cat3.jpg", (20, 12)), ("dog.png", (16, 16))]):  # fmt: skip
        noise(folder / name, size, i).with_suffix(".txt").write_text("a cat\n" if "cat" in name else "a dog")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "broken.txt").write_text("a broken image")
    (folder / "notes.md").write_text("not an image")
    noise(folder / "orphan.png", (16, 16), 9)  # no sidecar caption
    noise(folder / ".hidden.png", (16, 16), 10)
    config = make_config()  # scorers clip_score + aesthetic, keep 2
    root = tmp_path / "catalog"
    args = ["score", str(folder), "--config", str(config), "--prompts-from", "sidecar", "--out", str(root)]

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for why in (
        "broken.png: not a readable image",
        "notes.md: not a readable image",
        "orphan.png: no prompt",
    ):
        assert f"skipped {why}" in result.output
    assert "scored 4 images (3 kept, 3 files skipped" in result.output
    rows = read_catalog(root)
    assert len(rows) == 4 and (rows["source"] == "external").all()
    assert rows.groupby("prompt")["kept"].sum().to_dict() == {"a cat": 2, "a dog": 1}
    assert rows["seed"].isna().all() and rows["model"].isna().all()
    assert rows["score_clip_score"].between(0, 100).all() and rows["score_aesthetic"].notna().all()
    assert sorted(zip(rows["width"], rows["height"], strict=True)) == [(16, 16), (16, 16), (20, 12), (24, 24)]
    for row in rows.itertuples():
        source = folder / json.loads(row.prompt_meta)["file"]
        if not row.kept:
            assert pd.isna(row.image_path) and row.reject_reason == "not_top_k"
            continue
        stored = root / row.image_path
        assert stored.name == f"{row.candidate_id}{source.suffix}"  # names from ids, not prompts
        assert stored.read_bytes() == source.read_bytes()
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row.image_sha256

    again = CliRunner().invoke(app, args)  # same images, same settings: same run, nothing redone
    assert again.exit_code == 0 and "1/1 shards already done" in again.output
    assert read_catalog(root).drop(columns=["created_at"]).equals(rows.drop(columns=["created_at"]))

    exported = CliRunner().invoke(
        app, ["export", str(root), "--format", "kohya", "--out", str(tmp_path / "k")]
    )
    assert exported.exit_code == 0 and "exported 3 samples" in exported.output
    assert len(list((tmp_path / "k" / "train" / "1_winnow").glob("*.jpg"))) == 1
    assert render(root).count("<img ") == 3


def test_prompts_from_csv_and_filename(tmp_path):
    folder = tmp_path / "images"
    noise(folder / "a_red_circle.png", (8, 8), 0)
    noise(folder / "sub" / "x.png", (8, 8), 1)
    (folder / "readme.txt").write_text("not an image")
    found, skipped = find_images(folder, "filename")
    assert [(f.rel, f.prompt) for f in found] == [("a_red_circle.png", "a red circle"), ("sub/x.png", "x")]
    assert skipped == [("readme.txt", "not a readable image (UnidentifiedImageError)")]

    table = tmp_path / "prompts.csv"
    table.write_text("file,prompt\nsub/x.png,a blue square\n")
    found, skipped = find_images(folder, f"csv:{table}")
    assert [(f.rel, f.prompt) for f in found] == [("sub/x.png", "a blue square")]
    assert ("a_red_circle.png", f"no prompt (csv:{table})") in skipped

    result = CliRunner().invoke(app, ["score", str(folder), "--config", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and result.output.startswith("error: config file not found")


def test_save_rejected_copies_every_image_and_a_lost_part_is_redone(make_config, tmp_path):
    folder = tmp_path / "earlier"
    for i, (name, prompt) in enumerate([("a.png", "a cat"), ("b.jpg", "a cat"), ("c.png", "a dog")]):
        noise(folder / name, (16, 16), i).with_suffix(".txt").write_text(prompt)
    # Not compacted at the end (run.compact): the test loses one of the run's parts.
    config = make_config(run={"shard_size": 1, "save_rejected": True, "compact": False})
    root = tmp_path / "catalog"
    args = ["score", str(folder), "--config", str(config), "--out", str(root), "--run-id", "mine"]
    args += ["--device", "cpu"]

    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "scored 3 images (3 kept, 0 files skipped, 0/2 shards already done)" in first.output
    rows = read_catalog(root).sort_values("candidate_id", ignore_index=True)
    assert set(rows["run_id"]) == {"mine"} and sorted(rows["shard_id"].unique()) == ["00000", "00001"]
    assert (rows["device"] == "cpu").all() and rows["round"].isna().all()
    manifest = read_manifest(root, "mine")  # written before the parts, as for a generated run
    assert manifest.source == "external" and {manifest.config_hash} == set(rows["config_hash"])
    assert manifest.prompts.kind == "sidecar" and manifest.prompts.prompts == 2
    for row in rows.itertuples():  # every image saved, byte for byte, under its id
        source = folder / json.loads(row.prompt_meta)["file"]
        assert row.image_path == f"images/mine/{row.candidate_id}{source.suffix}"
        assert (root / row.image_path).read_bytes() == source.read_bytes()

    (root / "runs" / "mine" / "shard-00001.parquet").unlink()
    # A killed run's temp files (writer process gone) are removed, as the flow does.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = [
        root / "runs" / "mine" / f".shard-00001.parquet.{int(dead.stdout)}.1.tmp",
        root / "images" / "mine" / f".x.png.{int(dead.stdout)}.1.tmp",
    ]
    for path in stale:
        path.write_bytes(b"x")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "1/2 shards already done" in again.output
    assert not any(path.exists() for path in stale)
    redone = read_catalog(root).sort_values("candidate_id", ignore_index=True)
    same = ["candidate_id", "shard_id", "kept", "rank", "image_path", "image_sha256"]
    pd.testing.assert_frame_equal(redone[same], rows[same])
