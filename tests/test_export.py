"""`winnow export`: each format is loaded back by its consumer (Hugging Face datasets,
webdataset) or checked against the layout it documents (kohya), and compared to the catalog:
splits by prompt (stable as the catalog grows), the full row as metadata, the dataset card."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from winnow.catalog import export as export_module
from winnow.catalog.card import model_license, size_category
from winnow.catalog.export_fields import nearest_bucket, parse_buckets
from winnow.catalog.labels import Decision, write_labels
from winnow.catalog.manifest import generated_manifest, manifest_path, write_manifest
from winnow.catalog.query import CatalogError, read_catalog
from winnow.catalog.schema import COLUMNS
from winnow.catalog.splits import SplitError, parse_splits, split_of
from winnow.flows.cli import app
from winnow.pipeline.config import Config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.shard import plan_shards, process_shard

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
SPLIT = "validation=0.2"  # for these prompts: 2 in validation, 1 in train


def make_run(
    folder: Path,
    out: Path,
    run_id: str,
    prompts: list[str],
    tiny_sd,
    tiny_clip,
    tiny_head,
    save_rejected: bool = True,
) -> None:
    """A run of ``prompts`` x 3 candidates, 1 kept per prompt, rejected images saved (unless
    ``save_rejected`` is false), with its manifest, into the catalog ``out``."""
    (folder / f"{run_id}.txt").write_text("\n".join(prompts) + "\n")
    clip = {"model": str(tiny_clip.model), "pretrained": str(tiny_clip.pretrained)}
    config = Config.model_validate(
        {
            "prompts": {"path": str(folder / f"{run_id}.txt")},
            "generator": {"model": str(tiny_sd), "steps": 2, "batch_size": 4, "guidance": 3.0},
            "scorers": {"clip_score": {"clip": clip}, "aesthetic": {"clip": clip, "head": str(tiny_head)}},
            "select": {"keep": 1, "weights": {"clip_score": 1.0, "aesthetic": 0.5}},
            "run": {"out": str(out), "candidates": 3, "shard_size": 2, "save_rejected": save_rejected},
        }
    )
    write_manifest(out, generated_manifest(config, run_id, len(prompts)))
    for plan in plan_shards(run_id, read_prompts(folder / f"{run_id}.txt"), 2):
        process_shard(config, plan)


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_sd, tiny_clip, tiny_head) -> Path:
    """One run ``exp``: 3 prompts x 3 candidates (9 images, 3 kept)."""
    folder = tmp_path_factory.mktemp("export")
    make_run(folder, folder / "catalog", "exp", PROMPTS, tiny_sd, tiny_clip, tiny_head)
    return folder / "catalog"


@pytest.fixture(scope="module")
def splits(root) -> dict[str, str]:
    """candidate_id -> expected split under SPLIT: both splits are non-empty for these prompts."""
    rows = read_catalog(root)
    pairs = zip(rows["candidate_id"], rows["prompt_id"], strict=True)
    expected = {c: split_of(p, parse_splits(SPLIT)) for c, p in pairs}
    assert set(expected.values()) == {"train", "validation"}
    return expected


def export(root: Path, out: Path, *args: str):
    result = CliRunner().invoke(app, ["export", str(root), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return result


def card(out: Path) -> tuple[dict, str]:
    """The export's dataset card: (YAML header, body)."""
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def card_splits(header: dict) -> list[str]:
    return [f["split"] for f in header["configs"][0]["data_files"]]


def assert_full_row(sample: dict, row: pd.Series, split: str) -> None:
    """Every catalog column is exported with the catalog's value (provenance), plus the
    caption, split and image size."""
    for column in [c.name for c in COLUMNS] + ["score_clip_score", "score_aesthetic"]:
        expected, got = row[column], sample[column]
        if expected is None or pd.isna(expected):
            assert got is None, column
        elif column == "created_at":
            assert pd.Timestamp(got) == expected
        elif isinstance(expected, float):
            assert got == pytest.approx(expected), column
        else:
            assert got == expected, column
    assert sample["text"] == row["prompt"] and sample["split"] == split
    assert (sample["original_width"], sample["original_height"]) == (row["width"], row["height"])
    assert sample["aspect_ratio"] == 1.0


def test_imagefolder_splits_full_rows_and_card_load_with_hf_datasets(root, splits, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = read_catalog(root).set_index("candidate_id", drop=False)
    out = tmp_path / "imagefolder"
    result = export(root, out, "--format", "imagefolder", "--split", SPLIT)
    n_val = sum(s == "validation" for s in splits.values())
    assert f"exported 9 samples (train {9 - n_val}, validation {n_val})" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "train", "validation"]
    # load_dataset(DIR) reads the card: its configs, splits and features
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert set(ds) == {"train", "validation"} and len(ds["validation"]) == n_val
    prompts = {name: set(ds[name]["prompt_id"]) for name in ds}
    assert not prompts["train"] & prompts["validation"]  # a prompt's images stay in one split
    for name in ds:
        for sample in ds[name]:
            row = rows.loc[sample["candidate_id"]]
            assert splits[sample["candidate_id"]] == name
            assert_full_row(sample, row, name)
            assert sample["image"].size == (row["width"], row["height"])
    # as the diffusers text-to-image script loads --train_data_dir DIR/train: train only, with
    # the image and text columns it reads by default
    diffusers_way = {"train": str(out / "train" / "**")}
    trained = datasets.load_dataset("imagefolder", data_files=diffusers_way, cache_dir=str(tmp_path / "hf3"))
    assert sorted(trained["train"]["candidate_id"]) == sorted(ds["train"]["candidate_id"])
    assert {"image", "text"} <= set(trained["train"].column_names)
    # without a card, datasets' imagefolder builder reads the same folders
    plain = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf2"))
    assert {n: len(d) for n, d in plain.items()} == {n: len(d) for n, d in ds.items()}
    header, _ = card(out)
    assert card_splits(header) == ["train", "validation"]
    assert [(s["name"], s["num_examples"]) for s in header["dataset_info"]["splits"]] == [
        ("train", 9 - n_val),
        ("validation", n_val),
    ]
    assert all(s["num_bytes"] > 0 for s in header["dataset_info"]["splits"])
    # the card's features are what datasets reads from the JSON metadata
    assert datasets.Features._from_yaml_list(header["dataset_info"]["features"]) == ds["train"].features
    assert header["size_categories"] == ["n<1K"] and header["license"] == "unknown"  # tiny_sd: no card


def test_webdataset_split_shards_load_with_webdataset_and_hf_datasets(root, splits, tmp_path):
    wds = pytest.importorskip("webdataset")
    datasets = pytest.importorskip("datasets")
    rows = read_catalog(root).set_index("candidate_id", drop=False)
    out = tmp_path / "wds"
    export(root, out, "--format", "webdataset", "--shard-size", "4", "--split", SPLIT)
    n_val = sum(s == "validation" for s in splits.values())
    n_train = 9 - n_val
    expected_shards = [f"train-{i:06d}.tar" for i in range(-(-n_train // 4))]
    expected_shards += [f"validation-{i:06d}.tar" for i in range(-(-n_val // 4))]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(expected_shards)
    for split in ("train", "validation"):
        shards = sorted(str(p) for p in out.glob(f"{split}-*.tar"))
        samples = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))
        assert len(samples) == (n_train if split == "train" else n_val)
        for sample in samples:
            meta = json.loads(sample["json"])
            row = rows.loc[meta["candidate_id"]]
            assert sample["__key__"] == f"exp/{meta['candidate_id']}"  # members <run_id>/<candidate_id>.*
            assert sample["txt"].decode() == row["prompt"] == meta["text"]
            assert hashlib.sha256(sample["png"]).hexdigest() == row["image_sha256"]  # the bytes, unchanged
            assert_full_row(meta, row, split)
    decoded = next(iter(wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False).decode("pil")))
    assert decoded["png"].size == (16, 16)
    # datasets' webdataset builder, through the card's configs and features
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert {n: len(d) for n, d in ds.items()} == {"train": n_train, "validation": n_val}
    sample = ds["validation"][0]
    assert sample["png"].size == (16, 16) and sample["txt"] == sample["json"]["text"]
    assert_full_row(sample["json"], rows.loc[sample["json"]["candidate_id"]], "validation")
    assert card_splits(card(out)[0]) == ["train", "validation"]


def test_parquet_export_has_image_bytes_shards_by_size_and_loads(root, splits, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = read_catalog(root).set_index("candidate_id", drop=False)
    out = tmp_path / "parquet"
    image_bytes = max((root / p).stat().st_size for p in rows["image_path"])
    # a shard closes once it holds at least this many image bytes: two images per shard
    export(root, out, "--format", "parquet", "--shard-mb", str(image_bytes * 1.5 / 1e6))
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert shards == [f"train-{i:05d}-of-00005.parquet" for i in range(5)]  # 9 images, 2 per shard
    table = pq.read_table(out / "data" / shards[0])
    assert table.schema.field("image").type.names == ["bytes", "path"]  # as datasets writes it
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train", cache_dir=str(tmp_path))
    assert len(ds) == 9
    for sample in ds:
        row = rows.loc[sample["candidate_id"]]
        assert_full_row(sample, row, "train")
        buffer = io.BytesIO()
        sample["image"].save(buffer, format="PNG")
        assert Image.open(buffer).size == (row["width"], row["height"])
    raw = ds.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert hashlib.sha256(raw["bytes"]).hexdigest() == rows.loc[ds[0]["candidate_id"], "image_sha256"]
    assert raw["path"] == f"exp_{ds[0]['candidate_id']}.png"
    # with a split, through the card
    split_out = tmp_path / "parquet-split"
    export(root, split_out, "--format", "parquet", "--split", SPLIT)
    assert sorted(p.name for p in (split_out / "data").iterdir()) == [
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]
    by_card = datasets.load_dataset(str(split_out), cache_dir=str(tmp_path / "b"))
    assert {n: sorted(d["candidate_id"]) for n, d in by_card.items()} == {
        n: sorted(c for c, s in splits.items() if s == n) for n in ("train", "validation")
    }


def test_kohya_layout_caption_extension_and_validation_apart(root, splits, tmp_path):
    rows = read_catalog(root)
    out = tmp_path / "kohya"
    where = "prompt <> 'a blue square'"
    kohya = ["--format", "kohya", "--repeats", "10", "--name", "shapes", "--caption-extension", ".caption"]
    export(root, out, *kohya, "--kept-only", "--where", where, "--split", SPLIT)
    expected = rows[rows["kept"] & (rows["prompt"] != "a blue square")].set_index("candidate_id", drop=False)
    in_split = {s: sorted(c for c in expected.index if splits[c] == s) for s in ("train", "validation")}
    assert sorted(p.name for p in out.iterdir()) == ["README.md"] + [s for s in in_split if in_split[s]]
    for split, ids in in_split.items():
        if not ids:
            continue
        folder = out / split / "10_shapes"  # <repeats>_<name>, as sd-scripts parses it
        assert [p.name for p in (out / split).iterdir()] == ["10_shapes"]
        images = sorted(folder.glob("*.png"))
        assert [p.stem.split("_")[1] for p in images] == ids  # names from ids: <run_id>_<candidate_id>
        for image in images:  # image + caption side by side
            caption = image.with_suffix(".caption").read_text()
            assert caption == expected.loc[image.stem.split("_")[1], "prompt"]
        assert sorted({p.suffix for p in folder.iterdir()}) == [".caption", ".png"]
    header, body = card(out)
    assert card_splits(header) == [s for s in in_split if in_split[s]]
    assert "--caption_extension .caption" in body


def test_split_is_stable_when_the_catalog_grows(root, tmp_path, tiny_sd, tiny_clip, tiny_head):
    before = tmp_path / "before"
    export(root, before, "--format", "imagefolder", "--split", SPLIT)
    grown = tmp_path / "catalog"
    shutil.copytree(root, grown)
    # a second run: one prompt again, two new ones
    prompts = ["a red circle", "a pink star", "a grey moon"]
    make_run(tmp_path, grown, "more", prompts, tiny_sd, tiny_clip, tiny_head)
    after = tmp_path / "after"
    export(grown, after, "--format", "imagefolder", "--split", SPLIT)

    def split_by_sample(out: Path) -> dict[str, str]:
        found = {}
        for split in ("train", "validation"):
            for line in (out / split / "metadata.jsonl").read_text().splitlines():
                meta = json.loads(line)
                found[f"{meta['run_id']}/{meta['candidate_id']}"] = split
        return found

    old, new = split_by_sample(before), split_by_sample(after)
    assert len(old) == 9 and len(new) == 18
    assert {k: new[k] for k in old} == old  # nothing already exported moves
    rows = read_catalog(grown)
    keys = zip(rows["run_id"], rows["candidate_id"], strict=True)
    by_prompt = rows.assign(split=[new[f"{r}/{c}"] for r, c in keys])
    assert by_prompt.groupby("prompt_id")["split"].nunique().max() == 1  # across runs too
    _, body = card(after)
    assert "### Run `exp` (generated)" in body and "### Run `more` (generated)" in body


def test_split_assignment_and_spec_errors():
    spec = parse_splits("validation=0.05")
    ids = [hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in range(4000)]
    share = sum(split_of(p, spec) == "validation" for p in ids) / len(ids)
    assert 0.035 < share < 0.065
    wider = parse_splits("validation=0.1")  # raising the fraction only moves prompts out of train
    assert all(split_of(p, wider) == "validation" for p in ids if split_of(p, spec) == "validation")
    reseeded = sum(split_of(p, spec, seed=1) != split_of(p, spec) for p in ids)
    assert reseeded > 0  # another seed draws another split
    assert list(parse_splits("validation=0.05, test=0.1")) == ["validation", "test"]
    assert parse_splits(None) == {} == parse_splits("")
    for bad, message in [
        ("validation", "expected NAME=FRACTION"),
        ("Validation=0.1", "expected NAME=FRACTION"),
        ("train=0.1", "given twice"),
        ("a=0.1,a=0.2", "given twice"),
        ("validation=x", "not a number"),
        ("validation=1.5", "not between 0 and 1"),
        ("a=0.5,b=0.5", "leave some for train"),
    ]:
        with pytest.raises(SplitError, match=message):
            parse_splits(bad)


def test_card_from_manifest_and_without_one(root, tmp_path):
    out = tmp_path / "card"
    export(root, out, "--format", "imagefolder", "--kept-only")
    header, body = card(out)
    assert card_splits(header) == ["train"] and "No split was asked for" in body
    assert header["task_categories"] == ["text-to-image"]
    features = [f["name"] for f in header["dataset_info"]["features"]]
    assert features[:3] == ["image", "text", "split"] and {c.name for c in COLUMNS} <= set(features)
    assert "3 kept (kept rate 33.3%); 3 in this export" in body
    assert "Selection weights: clip_score 1, aesthetic 0.5; keep 1 per prompt" in body
    fingerprint = read_catalog(root)["model_fingerprint"].iloc[0]
    assert f"| generator.model | `{read_catalog(root)['model'].iloc[0]}` | `{fingerprint}` |" in body
    assert "| scorers.aesthetic.head |" in body and "normalize: zscore" in body
    assert "license unknown" in body
    # a run written before manifests existed: the card says what is unknown
    old = tmp_path / "old"
    shutil.copytree(root, old)
    manifest_path(old, "exp").unlink()
    export(old, tmp_path / "old-card", "--format", "webdataset")
    header, body = card(tmp_path / "old-card")
    assert "no manifest" in body and "scorers, selection policy and weights" in body
    assert f"`{fingerprint}`" in body  # the generating model, from the rows
    assert header["license"] == "unknown"


def test_model_license_read_offline(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert model_license(str(model), None) is None
    (model / "README.md").write_text("---\nlicense: openrail++\ntags: [a]\n---\n# a model\n")
    assert model_license(str(model), None) == "openrail++"
    assert model_license("bundled:shapes-sd", None) == "Apache-2.0"  # shipped under winnow's license
    assert model_license("nobody/not-cached", None) is None  # never asks the network
    assert [size_category(n) for n in (0, 999, 1000, 2_000_000)] == ["n<1K", "n<1K", "1K<n<10K", "n>1M"]


def test_buckets_record_the_nearest_aspect(root, tmp_path):
    assert parse_buckets("1024x1024, 1152x896,896x1152") == [(1024, 1024), (1152, 896), (896, 1152)]
    assert nearest_bucket(1200, 900, parse_buckets("1024x1024,1152x896,896x1152")) == (1152, 896)
    assert nearest_bucket(500, 1000, [(1024, 1024), (896, 1152)]) == (896, 1152)
    with pytest.raises(CatalogError, match="expected WIDTHxHEIGHT"):
        parse_buckets("1024")
    out = tmp_path / "b"
    export(root, out, "--format", "imagefolder", "--buckets", "32x16,16x16")
    meta = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert {(m["bucket_width"], m["bucket_height"]) for m in meta} == {(16, 16)}


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
    for args, message in [
        (["--format", "zip"], "error: unknown export format 'zip'"),
        (["--format", "kohya", "--split", "validation=2"], "error: split 'validation'"),
        (["--format", "kohya", "--caption-extension", ".md"], "error: caption extension '.md'"),
        (["--format", "parquet", "--where", "no_such_column = 1"], "error: query failed"),
        (["--format", "parquet", "--run", "nosuchrun"], "error: no catalog rows with an image file match"),
    ]:
        bad = runner.invoke(app, ["export", str(root), "--out", str(tmp_path / "b"), *args])
        assert bad.exit_code == 2 and bad.output.startswith(message), bad.output
        assert len(bad.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_failed_export_leaves_nothing_behind(root, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "write_card", full_disk)  # fails after every image is written
    with pytest.raises(OSError, match="No space left"):
        export_module.export(root, "imagefolder", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the export folder nor its hidden partial one


def test_a_catalog_with_external_images_keeps_exact_seeds_and_each_file_type(root, tmp_path, make_config):
    datasets = pytest.importorskip("datasets")
    mixed = tmp_path / "catalog"
    shutil.copytree(root, mixed)
    folder = tmp_path / "earlier"
    folder.mkdir()
    for name, size in (("wide.jpg", (32, 16)), ("square.png", (16, 16))):
        Image.new("RGB", size, (200, 40, 40)).save(folder / name)
        (folder / name).with_suffix(".txt").write_text("an old picture")
    config = make_config(run={"save_rejected": True})
    scored = CliRunner().invoke(app, ["score", str(folder), "--config", str(config), "--out", str(mixed)])
    assert scored.exit_code == 0, scored.output
    # seeds as stored: int64 beside the external rows' nulls (pandas would make them lossy floats)
    seeds = {(r["run_id"], r["candidate_id"]): r["seed"] for r in pq.read_table(mixed / "runs").to_pylist()}
    assert any(s is not None and s > 2**53 for s in seeds.values())  # digits a float64 would lose

    out = tmp_path / "parquet"
    export(mixed, out, "--format", "parquet", "--buckets", "16x16,32x16")
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "a"))
    assert len(ds) == 11 and {s["seed"] for s in ds if s["source"] == "external"} == {None}
    assert all(s["seed"] == seeds[(s["run_id"], s["candidate_id"])] for s in ds)
    wide = next(s for s in ds if s["original_width"] == 32)
    assert (wide["aspect_ratio"], wide["bucket_width"], wide["bucket_height"]) == (2.0, 32, 16)
    assert wide["image"].format == "JPEG"  # the external image's own bytes

    wds_out = tmp_path / "wds"
    export(mixed, wds_out, "--format", "webdataset")
    by_card = datasets.load_dataset(str(wds_out), split="train", cache_dir=str(tmp_path / "b"))
    kinds = [("jpg" if s["jpg"] is not None else "png") for s in by_card]  # one column per file type
    assert sorted(kinds).count("jpg") == 1 and len(kinds) == 11
    assert all(s["json"]["seed"] == seeds[(s["json"]["run_id"], s["json"]["candidate_id"])] for s in by_card)
    _, body = card(wds_out)
    assert "scored existing images: their license is their own" in body


def test_card_counts_kept_final(root, tmp_path):
    copy = tmp_path / "catalog"
    shutil.copytree(root, copy)
    rows = read_catalog(copy)
    extra = rows[~rows["kept"]].head(2)  # a reviewer keeps two the policy rejected
    decisions = [Decision(r.run_id, r.prompt_id, r.candidate_id, "keep") for r in extra.itertuples()]
    write_labels(copy, decisions, "ann")
    out = tmp_path / "card"
    export(copy, out, "--format", "imagefolder")
    assert "9 candidates, 5 kept (kept rate 55.6%)" in card(out)[1]
