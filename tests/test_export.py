"""`winnow export`: each format is loaded back by its consumer (Hugging Face datasets,
webdataset) or checked against the layout it documents (kohya), and compared to the catalog."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from winnow.catalog.query import read_catalog
from winnow.flows.cli import app
from winnow.pipeline.config import Config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.shard import plan_shards, process_shard

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_sd, tiny_clip, tiny_head) -> Path:
    """One run, 3 prompts x 3 candidates, 1 kept per prompt, rejected images saved too."""
    folder = tmp_path_factory.mktemp("export")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    clip = {"model": str(tiny_clip.model), "pretrained": str(tiny_clip.pretrained)}
    config = Config.model_validate(
        {
            "prompts": {"path": str(folder / "prompts.txt")},
            "generator": {"model": str(tiny_sd), "steps": 2, "batch_size": 4, "guidance": 3.0},
            "scorers": {"clip_score": {"clip": clip}, "aesthetic": {"clip": clip, "head": str(tiny_head)}},
            "select": {"keep": 1},
            "run": {"out": str(folder / "catalog"), "candidates": 3, "shard_size": 2, "save_rejected": True},
        }
    )
    for plan in plan_shards("exp", read_prompts(folder / "prompts.txt"), 2):
        process_shard(config, plan)
    return folder / "catalog"


def export(root: Path, out: Path, *args: str):
    result = CliRunner().invoke(app, ["export", str(root), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return result


def test_imagefolder_loads_with_hf_datasets(root, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = read_catalog(root)
    out = tmp_path / "imagefolder"
    result = export(root, out, "--format", "imagefolder")
    assert "exported 9 samples" in result.output
    ds = datasets.load_dataset(
        "imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(ds) == len(rows) == 9
    # the columns the diffusers text-to-image script reads by default
    assert {"image", "text"} <= set(ds.column_names)
    assert {"candidate_id", "seed", "kept", "score_clip_score", "score_aesthetic"} <= set(ds.column_names)
    by_id = rows.set_index("candidate_id")
    for sample in ds:
        row = by_id.loc[sample["candidate_id"]]
        assert sample["text"] == row["prompt"]
        assert sample["seed"] == row["seed"] and sample["kept"] == row["kept"]
        assert sample["image"].size == (row["width"], row["height"])
    names = [json.loads(line)["file_name"] for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(names) == sorted(p.name for p in out.glob("*.png"))


def test_webdataset_shards_iterate_with_webdataset(root, tmp_path):
    wds = pytest.importorskip("webdataset")
    rows = read_catalog(root)
    out = tmp_path / "wds"
    export(root, out, "--format", "webdataset", "--shard-size", "4")
    shards = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False, empty_check=False))
    assert len(samples) == len(rows) == 9
    by_id = rows.set_index("candidate_id")
    for sample in samples:
        meta = json.loads(sample["json"])
        row = by_id.loc[meta["candidate_id"]]
        assert sample["__key__"] == f"exp/{meta['candidate_id']}"
        assert sample["txt"].decode() == row["prompt"] == meta["text"]
        assert hashlib.sha256(sample["png"]).hexdigest() == row["image_sha256"]  # the bytes, unchanged
        assert meta["score_clip_score"] == pytest.approx(row["score_clip_score"])
    decoded = next(iter(wds.WebDataset(str(shards[0]), shardshuffle=False).decode("pil")))
    assert decoded["png"].size == (16, 16)


def test_kohya_layout_kept_only_with_where(root, tmp_path):
    rows = read_catalog(root)
    out = tmp_path / "kohya"
    where = "prompt <> 'a blue square'"
    export(
        root, out, "--format", "kohya", "--kept-only", "--where", where, "--repeats", "10", "--name", "shapes"
    )
    assert [p.name for p in out.iterdir()] == ["10_shapes"]  # <repeats>_<name>, as sd-scripts parses it
    folder = out / "10_shapes"
    expected = rows[rows["kept"] & (rows["prompt"] != "a blue square")]
    images = sorted(folder.glob("*.png"))
    assert len(images) == len(expected) == 2
    for image in images:  # image + caption side by side, names from ids
        run_id, candidate_id = image.stem.split("_")
        assert run_id == "exp"
        caption = image.with_suffix(".txt").read_text()
        assert caption == expected.set_index("candidate_id").loc[candidate_id, "prompt"]
    assert sorted(p.suffix for p in folder.iterdir()) == [".png", ".png", ".txt", ".txt"]


def test_missing_images_are_skipped_and_errors_are_one_line(root, tmp_path):
    rows = read_catalog(root)
    victim = root / rows.loc[~rows["kept"], "image_path"].iloc[0]
    data = victim.read_bytes()
    victim.unlink()
    try:
        result = export(root, tmp_path / "a", "--format", "kohya")
        assert "exported 8 samples" in result.output and "image file missing" in result.output
    finally:
        victim.write_bytes(data)
    runner = CliRunner()
    again = runner.invoke(app, ["export", str(root), "--out", str(tmp_path / "a"), "--format", "kohya"])
    assert again.exit_code == 2 and "is not empty" in again.output
    bad = runner.invoke(app, ["export", str(root), "--out", str(tmp_path / "b"), "--format", "zip"])
    assert bad.exit_code == 2 and bad.output.startswith("error: unknown export format 'zip'")
