"""Near-duplicates: within a prompt at selection (``select.dedup``), and across the catalog
(``winnow dedup``) from the stored embeddings, recorded in a side table the view joins."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.test_embeddings import PROMPTS, run
from winnow.catalog.dedup import DedupError, components, dedup_catalog, pairs_exact, pairs_faiss
from winnow.catalog.embeddings import load
from winnow.catalog.export import export
from winnow.catalog.query import connect, query, read_catalog
from winnow.catalog.report import render
from winnow.catalog.stats import run_stats
from winnow.pipeline.config import ConfigError, load_config
from winnow.scoring.phash import ImagehashMissingError, perceptual_hashes
from winnow.scoring.select import NOT_TOP_K, Dedup, Policy, select


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_a_near_duplicate_of_a_kept_candidate_gives_way_to_the_next_best() -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(4, 16)))
    vectors[1] = unit(vectors[0:1] + 0.01 * rng.normal(size=(1, 16)))[0]  # a near-copy of the best
    scores = {"s": np.array([4.0, 3.0, 2.0, 1.0])}
    ids = ["p-000", "p-001", "p-002", "p-003"]
    policy = Policy(keep=2, dedup=Dedup(cosine=0.95))
    chosen = select(scores, ["p"] * 4, policy, vectors, ids)
    assert chosen.kept.tolist() == [True, False, True, False]
    assert chosen.reason == [None, "near_duplicate:p-000", None, NOT_TOP_K]
    assert chosen.eligible.tolist() == [True, False, True, True]  # adaptive N counts it out
    # Without dedup the near-copy is kept; ranks and combined scores do not change.
    plain = select(scores, ["p"] * 4, Policy(keep=2))
    assert plain.kept.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(plain.rank, chosen.rank)
    with pytest.raises(ValueError, match="needs the candidates' embeddings"):
        select(scores, ["p"] * 4, policy)


def test_a_policy_without_dedup_dumps_as_before() -> None:
    assert "dedup" not in Policy(keep=2).model_dump()
    assert Policy(keep=2, dedup={"cosine": 0.9}).model_dump()["dedup"] == {"cosine": 0.9}


def test_select_dedup_in_a_run(make_config) -> None:
    config = load_config(make_config(PROMPTS, select={"keep": 2, "dedup": {"cosine": 0.5}}))
    rows = run(config)
    near = rows[rows["reject_reason"].fillna("").str.startswith("near_duplicate:")]
    # The tiny random CLIP maps the tiny pipeline's images close together: at 0.5 most are copies.
    assert len(near) > 0
    for row in near.itertuples():
        kept = rows[(rows["candidate_id"] == row.reject_reason.split(":", 1)[1]) & rows["kept"]]
        assert len(kept) == 1 and kept["prompt_id"].item() == row.prompt_id
    assert rows.groupby("prompt_id")["kept"].sum().max() <= 2


def test_select_dedup_needs_a_clip(make_config) -> None:
    path = make_config(select={"dedup": {"cosine": 0.9}})
    with pytest.raises(ConfigError, match=r"select\.dedup compares CLIP image embeddings"):
        load_config(path, {"scorers": {}})
    assert load_config(path).select.dedup == Dedup(cosine=0.9)


def pictures() -> torch.Tensor:
    """(3, 3, 64, 64) images in [0, 1]: diagonal stripes, vertical stripes, the first again."""
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    diagonal = 0.5 + 0.5 * torch.sin((x + y) / 3)
    vertical = 0.5 + 0.5 * torch.sin(x / 5)
    return torch.stack([diagonal, vertical, diagonal]).unsqueeze(1).expand(3, 3, 64, 64)


def test_phash_also_requires_the_pictures_to_look_alike() -> None:
    hashes = perceptual_hashes(pictures())
    assert hashes.shape == (3, 64) and hashes.dtype == bool
    assert (hashes[0] != hashes[1]).sum() > 8 and (hashes[0] == hashes[2]).all()
    vectors = unit(np.ones((3, 16)))  # one embedding for all three: cosine 1
    scores, ids = {"s": np.array([3.0, 2.0, 1.0])}, ["p-000", "p-001", "p-002"]
    cosine = select(scores, ["p"] * 3, Policy(keep=3, dedup=Dedup(cosine=0.95)), vectors, ids)
    assert cosine.reason == [None, "near_duplicate:p-000", "near_duplicate:p-000"]
    both = Policy(keep=3, dedup=Dedup(cosine=0.95, phash=8))
    chosen = select(scores, ["p"] * 3, both, vectors, ids, hashes)
    assert chosen.kept.tolist() == [True, True, False]  # other pixels: kept; the same: not
    assert chosen.reason == [None, None, "near_duplicate:p-000"]
    with pytest.raises(ValueError, match="perceptual hashes"):
        select(scores, ["p"] * 3, both, vectors, ids)
    assert Dedup(cosine=0.9).model_dump() == {"cosine": 0.9}  # run ids as before phash


def test_select_dedup_phash_in_a_run(make_config) -> None:
    select_ = {"keep": 2, "dedup": {"cosine": 0.5, "phash": 32}}
    config = load_config(make_config(PROMPTS, select=select_, run={"save_rejected": True}))
    rows = run(config).sort_values(["prompt_id", "candidate_index"], ignore_index=True)
    # The run's selection is select() on its scores, stored embeddings and saved images' hashes.
    root = Path(config.run.out)
    found, vectors = load(root, zip(rows["run_id"], rows["shard_id"], rows["candidate_id"], strict=True))
    assert found.all()
    pixels = [np.asarray(Image.open(root / path).convert("RGB")) for path in rows["image_path"]]
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2) / 255
    scores = {c.removeprefix("score_"): rows[c].to_numpy() for c in rows if c.startswith("score_")}
    ids = rows["candidate_id"].tolist()
    again = select(scores, rows["prompt_id"], config.select, vectors, ids, perceptual_hashes(images))
    assert again.kept.tolist() == rows["kept"].tolist()
    assert again.reason == [None if pd.isna(r) else r for r in rows["reject_reason"]]
    # The tiny pipeline's pictures are close by cosine, less so by pHash: phash spares some.
    alone = select(scores, rows["prompt_id"], Policy(keep=2, dedup=Dedup(cosine=0.5)), vectors, ids)
    near = [sum(str(r).startswith("near_duplicate") for r in s.reason) for s in (again, alone)]
    assert 0 < near[0] < near[1]


def test_phash_without_imagehash_is_a_one_line_error(make_config, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "imagehash", None)  # import imagehash raises ImportError
    config = load_config(make_config(PROMPTS, select={"dedup": {"cosine": 0.9, "phash": 4}}))
    with pytest.raises(ImagehashMissingError, match=r"needs the imagehash package .*\[dedup\]"):
        run(config)
    assert not list(Path(config.run.out).glob("runs/*/*.parquet"))  # nothing half-written


def test_exact_and_faiss_pairs_find_planted_duplicates() -> None:
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(4000, 64))).astype(np.float32)
    planted = rng.choice(4000, size=(50, 2), replace=False).reshape(-1, 2)
    planted = planted[planted[:, 0] != planted[:, 1]]
    for a, b in planted:
        x[b] = unit(x[a : a + 1] + 0.02 * rng.normal(size=(1, 64)))[0]
    truth = {tuple(sorted(p)) for p in planted.tolist()}
    exact = set(zip(*(v.tolist() for v in pairs_exact(x, 0.95)), strict=True))
    assert exact == truth  # random 64-d unit vectors are nowhere near 0.95 apart
    approx = set(zip(*(v.tolist() for v in pairs_faiss(x, 0.95)), strict=True))
    assert approx <= truth and len(approx) >= 0.95 * len(truth)


def test_components_link_chains() -> None:
    assert components(5, np.array([0, 3]), np.array([2, 2])).tolist() == [0, 1, 0, 0, 4]


def test_winnow_dedup_finds_every_injected_copy(make_config, tmp_path: Path) -> None:
    # The same prompts and seeds in two runs: every kept image of the second is a copy.
    config = load_config(make_config(PROMPTS))
    first, second = run(config, "first"), run(config, "second")
    result = dedup_catalog(config.run.out, cosine=0.999)
    kept = int(first["kept"].sum())
    assert result.rows == 2 * kept and result.decisions.duplicates >= kept
    rows = read_catalog(config.run.out)
    copies = rows[rows["run_id"] == "second"].query("kept")
    assert copies["dedup_kept"].eq(False).all()  # ties keep the earlier row: catalog order
    assert (copies["duplicate_of_run"] == "first").all()
    assert (copies["duplicate_of"] == copies["candidate_id"]).all()
    assert (copies["dedup_cosine"] >= 0.999).all()
    assert rows.loc[~rows["kept"], "dedup_kept"].isna().all()  # rejected rows were not examined
    sql = query(config.run.out, "SELECT count(*) AS n FROM catalog WHERE dedup_kept = false")
    assert sql["n"][0].as_py() == result.decisions.duplicates
    # Stats count them, the report shows each beside its original, export leaves them out.
    with connect(config.run.out) as con:
        stats = run_stats(con).set_index("run_id")
    assert stats.loc["second", "duplicates"] == kept and stats.loc["first", "duplicates"] == 0
    page = render(config.run.out)
    assert page.count("<div class='duplicate'>") == kept and "duplicate of</span> first/" in page
    deduped = export(config.run.out, "imagefolder", tmp_path / "deduped", kept_only=True)
    assert deduped.samples == kept
    everything = export(config.run.out, "imagefolder", tmp_path / "all", kept_only=True, dedup=False)
    assert everything.samples == 2 * kept
    # --where narrows the rows examined; a new decision replaces the old one.
    alone = dedup_catalog(config.run.out, cosine=0.999, where="run_id = 'first'")
    assert alone.rows == kept
    assert read_catalog(config.run.out).query("run_id == 'second'")["dedup_kept"].isna().all()
    with pytest.raises(DedupError, match="--cosine"):
        dedup_catalog(config.run.out, cosine=1.5)
    assert len(second) == len(first)


def test_the_rescore_and_dedup_commands(make_config) -> None:
    from typer.testing import CliRunner

    from winnow.flows.cli import app

    path = make_config(PROMPTS)
    config = load_config(path)
    run(config)
    runner, root = CliRunner(), str(config.run.out)
    done = runner.invoke(app, ["rescore", root, "--config", str(path), "--scorer", "aesthetic"])
    assert done.exit_code == 0, done.output
    assert "run run: skipped (its rows already have the score)" in done.output
    wrong = runner.invoke(app, ["rescore", root, "--config", str(path), "--scorer", "clip_score"])
    assert wrong.exit_code == 2 and wrong.output.count("\n") == 1 and "not a head scorer" in wrong.output
    grouped = runner.invoke(app, ["dedup", root, "--cosine", "0.999"])
    assert grouped.exit_code == 0, grouped.output
    assert "dedup (exact, cosine >= 0.999)" in grouped.output
    bad = runner.invoke(app, ["dedup", root, "--where", "no_such_column"])
    assert bad.exit_code == 2 and "query failed" in bad.output
