"""`winnow export --format pairs`: preference pairs loaded back with Hugging Face datasets in
the Diffusion-DPO layout, compared to the catalog: the preferred side is a kept image, a
reviewer's decisions override the policy, splits by prompt, and a one-line error when the
rejected images were not saved."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.test_export import PROMPTS, SPLIT, card, export, make_run
from winnow.catalog.labels import Decision, write_labels
from winnow.catalog.query import read_catalog
from winnow.catalog.splits import parse_splits, split_of
from winnow.flows.cli import app

COLUMNS = ["caption", "jpg_0", "jpg_1", "label_0", "split", "run_id", "prompt_id", "candidate_id_0",
           "candidate_id_1", "source"]  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_sd, tiny_clip, tiny_head) -> Path:
    """One run ``pairs``: 3 prompts x 3 candidates, 1 kept per prompt, rejected images saved."""
    folder = tmp_path_factory.mktemp("pairs")
    make_run(folder, folder / "catalog", "pairs", PROMPTS, tiny_sd, tiny_clip, tiny_head)
    return folder / "catalog"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(out, tmp_path) -> dict[str, list[dict]]:
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert all(ds[s].column_names == COLUMNS for s in ds)
    return {s: list(ds[s]) for s in ds}


def preferred(pair: dict) -> tuple[bytes, bytes]:
    """(preferred image bytes, rejected image bytes) as the DPO script reads label_0."""
    return (pair["jpg_0"], pair["jpg_1"]) if pair["label_0"] == 1.0 else (pair["jpg_1"], pair["jpg_0"])


def test_policy_pairs_load_with_datasets_in_the_dpo_layout(root, tmp_path):
    rows = read_catalog(root).set_index("image_sha256", drop=False)
    out = tmp_path / "pairs"
    result = export(root, out, "--format", "pairs", "--split", SPLIT)
    assert "exported 6 samples" in result.output  # 3 prompts x (1 kept x 2 rejected)
    ds = load(out, tmp_path)
    assert set(ds) == {"train", "validation"}
    pairs = [p for split in ds.values() for p in split]
    assert {p["label_0"] for p in pairs} == {0.0, 1.0}  # the preferred side is not always jpg_0
    for name, split_pairs in ds.items():
        for pair in split_pairs:
            good, bad = preferred(pair)
            chosen, rejected = rows.loc[sha(good)], rows.loc[sha(bad)]
            assert chosen["kept"] and not rejected["kept"]
            assert chosen["prompt_id"] == rejected["prompt_id"] == pair["prompt_id"]
            assert pair["caption"] == chosen["prompt"] and pair["source"] == "policy"
            assert split_of(pair["prompt_id"], parse_splits(SPLIT)) == pair["split"] == name
            first = chosen if pair["label_0"] == 1.0 else rejected
            assert pair["candidate_id_0"] == first["candidate_id"]
            # what train_diffusion_dpo.py does with a row: open both images from their bytes
            assert Image.open(io.BytesIO(pair["jpg_0"])).size == Image.open(io.BytesIO(pair["jpg_1"])).size
    header, body = card(out)
    assert "pairs" in header["tags"] and "6 preference pairs" in body and "`label_0`" in body
    # the cap keeps the widest gap first: the kept image against the worst-ranked one
    capped = tmp_path / "capped"
    assert "exported 3 samples" in export(root, capped, "--format", "pairs", "--pairs-per-prompt", "1").output
    for pair in load(capped, tmp_path)["train"]:
        _, bad = preferred(pair)
        assert rows.loc[sha(bad), "rank"] == 3


def test_human_decisions_override_the_policy(root, tmp_path):
    labelled = tmp_path / "catalog"
    shutil.copytree(root, labelled)
    rows = read_catalog(labelled)
    prompt = rows[rows["prompt"] == PROMPTS[0]].sort_values("rank")
    policy_pick, human_pick, other = (prompt.iloc[i] for i in range(3))
    write_labels(
        labelled,
        [
            Decision(r["run_id"], r["prompt_id"], r["candidate_id"], d)
            for r, d in ((policy_pick, "reject"), (human_pick, "keep"))
        ],
        "ann",
    )
    out = tmp_path / "pairs"
    export(labelled, out, "--format", "pairs")
    pairs = load(out, tmp_path)["train"]
    labelled_pairs = [p for p in pairs if p["prompt_id"] == policy_pick["prompt_id"]]
    assert {p["source"] for p in labelled_pairs} == {"human"}
    assert {p["source"] for p in pairs if p not in labelled_pairs} == {"policy"}
    # the human's pick is preferred over both others, the policy's pick among them
    assert sorted((sha(preferred(p)[0]), sha(preferred(p)[1])) for p in labelled_pairs) == sorted(
        (human_pick["image_sha256"], r["image_sha256"]) for r in (policy_pick, other)
    )


def test_without_saved_rejected_images_a_one_line_error(tmp_path, tiny_sd, tiny_clip, tiny_head):
    catalog = tmp_path / "catalog"
    make_run(tmp_path, catalog, "nosave", PROMPTS[:2], tiny_sd, tiny_clip, tiny_head, save_rejected=False)
    out = tmp_path / "pairs"
    result = CliRunner().invoke(app, ["export", str(catalog), "--out", str(out), "--format", "pairs"])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1
    assert "no preference pair" in result.output and "run.save_rejected: true" in result.output
    assert not out.exists() and not list(tmp_path.glob(".pairs*"))  # nothing left behind
    # --kept-only cannot make pairs; a cap below 1 is refused
    for args, message in [(["--kept-only"], "--kept-only"), (["--pairs-per-prompt", "0"], "at least 1")]:
        bad = CliRunner().invoke(app, ["export", str(catalog), "--out", str(out), "--format", "pairs", *args])
        assert bad.exit_code != 0 and message in bad.output and len(bad.output.strip().splitlines()) == 1
