"""Stored embeddings and ``winnow rescore``: each shard stores its candidates' shared CLIP
image embedding beside its part, and a head scorer added later backfills older rows from them
as a side table the catalog view joins. Tiny random models, CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from winnow.catalog.embeddings import embeddings_path, read_embeddings
from winnow.catalog.manifest import generated_manifest, read_manifest, write_manifest
from winnow.catalog.query import query, read_catalog
from winnow.pipeline.config import load_config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.rescore import RescoreError, rescore
from winnow.pipeline.shard import plan_shards, process_shard
from winnow.scoring.aesthetic import load_head

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def run(config, run_id: str = "run") -> pd.DataFrame:
    """All shards of ``config`` (no Prefect), its manifest written first; its rows."""
    prompts = read_prompts(config.prompts.path)
    write_manifest(config.run.out, generated_manifest(config, run_id, len(prompts)))
    for plan in plan_shards(run_id, prompts, config.run.shard_size):
        process_shard(config, plan)
    return read_catalog(config.run.out, run_id).sort_values("candidate_id", ignore_index=True)


def test_each_shard_stores_its_candidates_embeddings(make_config) -> None:
    config = load_config(make_config(PROMPTS))
    rows = run(config)
    root = Path(config.run.out)
    for shard_id, shard in rows.groupby("shard_id"):
        ids, vectors = read_embeddings(embeddings_path(root, "run", shard_id))
        assert sorted(ids) == sorted(shard["candidate_id"])  # every candidate (run.embeddings: all)
        assert vectors.dtype == np.float16 and vectors.shape == (len(ids), 32)  # the tiny CLIP's width
        np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    embedding = read_manifest(root, "run").embedding
    assert embedding is not None and embedding.stored == "all"
    assert embedding.clip == config.scorers["aesthetic"].clip.model_dump(mode="json")
    # The catalog's Parquet dataset is still the parts alone.
    assert len(pd.read_parquet(root / "runs")) == len(rows)


@pytest.mark.parametrize("mode", ["kept", "none"])
def test_run_embeddings_kept_or_none(make_config, mode: str) -> None:
    config = load_config(make_config(PROMPTS, run={"embeddings": mode}))
    rows = run(config)
    stored = [
        c
        for shard_id in rows["shard_id"].unique()
        if embeddings_path(Path(config.run.out), "run", shard_id).exists()
        for c in read_embeddings(embeddings_path(Path(config.run.out), "run", shard_id))[0]
    ]
    expected = sorted(rows.loc[rows["kept"], "candidate_id"]) if mode == "kept" else []
    assert sorted(stored) == expected
    assert (read_manifest(config.run.out, "run").embedding is None) == (mode == "none")


def test_run_embeddings_does_not_change_the_run_id(make_config) -> None:
    hashes = {load_config(make_config(run={"embeddings": m})).result_hash() for m in ("all", "kept", "none")}
    assert len(hashes) == 1


def test_rescore_backfills_a_head_scorer_as_a_run_that_had_it(make_config, tmp_path: Path) -> None:
    both = load_config(make_config(PROMPTS))
    with_head = run(both)
    # The same run without the aesthetic head, in another catalog: its rows have no such score.
    only_clip = load_config(
        make_config(PROMPTS, run={"out": str(tmp_path / "later")}),
        {"scorers": {"clip_score": {"clip": both.scorers["clip_score"].clip.model_dump()}}},
    )
    without = run(only_clip)
    assert "score_aesthetic" not in without.columns

    outcome = rescore(only_clip.run.out, "aesthetic", both.scorers["aesthetic"])
    assert [(r.run_id, r.rows, r.skipped) for r in outcome] == [("run", len(without), None)]
    after = read_catalog(only_clip.run.out).sort_values("candidate_id", ignore_index=True)
    assert after["candidate_id"].tolist() == with_head["candidate_id"].tolist()
    # A run's scorers already read the embedding rounded to float16, as it is stored.
    np.testing.assert_allclose(after["score_aesthetic"], with_head["score_aesthetic"], atol=1e-5, rtol=0)
    # Exactly the head applied to the stored embeddings.
    ids, vectors = read_embeddings(embeddings_path(Path(only_clip.run.out), "run", "00000"))
    head = load_head(both.scorers["aesthetic"].head, "cpu")
    with torch.inference_mode():
        direct = head(torch.from_numpy(vectors.astype(np.float32))).double().numpy()
    got = after.set_index("candidate_id").loc[ids, "score_aesthetic"].to_numpy()
    np.testing.assert_allclose(got, direct, atol=1e-6, rtol=0)
    # The SQL view joins the same side table.
    sql = query(only_clip.run.out, "SELECT candidate_id, score_aesthetic FROM catalog ORDER BY candidate_id")
    np.testing.assert_allclose(sql["score_aesthetic"].to_numpy(), after["score_aesthetic"], atol=0)
    # The parts were not rewritten, and a run that had the head is left alone.
    assert (
        "score_aesthetic"
        not in pq.read_schema(next((Path(only_clip.run.out) / "runs" / "run").glob("*.parquet"))).names
    )
    (again,) = rescore(both.run.out, "aesthetic", both.scorers["aesthetic"])
    assert again.skipped == "its rows already have the score"


def test_rescore_needs_a_head_scorer_and_stored_embeddings(make_config) -> None:
    config = load_config(make_config(PROMPTS, run={"embeddings": "none"}))
    run(config)
    with pytest.raises(RescoreError, match="not a head scorer"):
        rescore(config.run.out, "clip_score", config.scorers["clip_score"])
    (outcome,) = rescore(config.run.out, "aesthetic", config.scorers["aesthetic"])
    assert outcome.skipped == "no stored embeddings"


def test_rescore_loads_the_head_alone(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(make_config(PROMPTS))
    rows = run(config)

    def no_clip(*args: object) -> None:
        raise AssertionError("rescore loaded a CLIP model")

    monkeypatch.setattr("winnow.scoring.head.load_clip", no_clip)
    monkeypatch.setattr("winnow.scoring.clip.load_clip", no_clip)
    for part in (Path(config.run.out) / "runs" / "run").glob("*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["score_aesthetic"]), part)
    (outcome,) = rescore(config.run.out, "aesthetic", config.scorers["aesthetic"])
    assert (outcome.rows, outcome.skipped) == (len(rows), None)
