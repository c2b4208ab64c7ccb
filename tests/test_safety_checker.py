"""The pipeline's own safety checker: its verdict is recorded per candidate, a flagged (blacked
out) image is never scored, saved or kept, and the config can turn the checker off or require
it. A tiny random ``StableDiffusionSafetyChecker`` on the tiny pipeline, CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from winnow.catalog.embeddings import embeddings_path, read_embeddings
from winnow.models.errors import WinnowError
from winnow.models.generator import Generator, GeneratorParams, Request, load_pipeline
from winnow.pipeline.config import load_config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.shard import plan_shards, process_shard
from winnow.scoring.select import select

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def checked_sd(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> Path:
    """The tiny pipeline with a checker that flags about half of the images."""
    from winnow.models.testing import build_tiny_checker_pipeline

    return build_tiny_checker_pipeline(tiny_sd, tmp_path_factory.mktemp("checked-sd"))


def run(config) -> pd.DataFrame:
    """All shards of ``config`` through ``process_shard`` (no Prefect); the rows."""
    prompts = read_prompts(config.prompts.path)
    for plan in plan_shards("run", prompts, config.run.shard_size):
        process_shard(config, plan)
    rows = pd.read_parquet(Path(config.run.out) / "runs")
    return rows.sort_values("candidate_id").reset_index(drop=True)


def test_the_generator_reports_each_images_verdict(checked_sd: Path, tiny_sd: Path) -> None:
    requests = [Request(p, "", seed) for p in PROMPTS for seed in range(4)]
    batches = list(
        Generator(GeneratorParams(model=str(checked_sd), steps=2, batch_size=5)).generate(requests)
    )
    flagged = [f for b in batches for f in b.flagged]
    images = torch.cat([b.images for b in batches])
    assert len(flagged) == len(requests) and 0 < sum(flagged) < len(requests)
    for image, flag in zip(images, flagged, strict=True):
        assert bool((image == 0).all()) == flag  # the checker blacked out exactly those it flagged
    plain = Generator(GeneratorParams(model=str(tiny_sd), steps=2, batch_size=5))
    assert all(b.flagged is None for b in plain.generate(requests[:2]))  # no checker: no verdict


@pytest.mark.parametrize("prune", [None, {"at": 0.5, "drop": 0.25}], ids=["plain", "pruned"])
def test_flagged_candidates_are_never_scored_saved_or_kept(
    make_config, checked_sd: Path, tmp_path: Path, prune: dict | None
) -> None:
    sections = {
        "generator": {"model": str(checked_sd), "steps": 2},
        "run": {"candidates": 4, "save_rejected": True},
    }
    config = load_config(make_config(PROMPTS, **sections, **({"prune": prune} if prune else {})))
    rows = run(config)
    pruned = rows["reject_reason"].str.startswith("pruned_at_step", na=False)
    assert rows.loc[pruned, "safety_flagged"].isna().all()  # never finished, never checked
    done = rows[~pruned]
    assert done["safety_flagged"].notna().all()
    flagged, clean = done[done["safety_flagged"]], done[~done["safety_flagged"].astype(bool)]
    assert len(flagged) and len(clean)
    scores = [f"score_{name}" for name in config.scorers]
    assert flagged[scores].isna().all().all() and flagged["combined_score"].eq(-np.inf).all()
    assert not flagged["kept"].any() and flagged["reject_reason"].eq("safety_checker").all()
    assert flagged["image_path"].isna().all()  # save_rejected writes no blacked-out image
    assert clean[scores].notna().all().all() and clean["image_path"].notna().all()
    for prompt_id, mine in rows.groupby("prompt_id"):
        assert sorted(mine["rank"]) == list(range(1, len(mine) + 1))
        ranked = mine.sort_values("rank")
        assert list(ranked["safety_flagged"].fillna(False).astype(bool)) == sorted(
            ranked["safety_flagged"].fillna(False).astype(bool)
        ), prompt_id  # flagged ones rank last
    if prune is None:  # the selection is the policy's over the clean candidates alone
        chosen = select(
            {s: clean[f"score_{s}"].to_numpy() for s in config.scorers}, clean["prompt_id"], config.select
        )
        assert list(clean["kept"]) == list(chosen.kept)
        assert [r if isinstance(r, str) else None for r in clean["reject_reason"]] == chosen.reason
    parts = sorted(embeddings_path(config.run.out, "run", "x").parent.glob("*.parquet"))
    stored = {i for part in parts for i in read_embeddings(part)[0]}
    assert stored and not stored & set(flagged["candidate_id"])  # a black image's embedding is no picture's


def test_the_config_turns_the_checker_off_or_requires_it(
    make_config, checked_sd: Path, tiny_sd: Path
) -> None:
    off = GeneratorParams(model=str(checked_sd), safety_checker=False)
    assert load_pipeline(off).safety_checker is None  # not loaded at all
    assert load_pipeline(GeneratorParams(model=str(checked_sd))).safety_checker is not None
    config = load_config(
        make_config(PROMPTS[:1], generator={"model": str(checked_sd), "steps": 2, "safety_checker": False})
    )
    rows = run(config)
    assert rows["safety_flagged"].isna().all() and rows["kept"].sum() == config.select.keep
    with pytest.raises(
        WinnowError, match=r"safety_checker is true but model .* has no safety checker"
    ) as err:
        load_pipeline(GeneratorParams(model=str(tiny_sd), safety_checker=True))
    assert "\n" not in str(err.value)


def test_unset_the_key_keeps_run_ids(make_config, checked_sd: Path) -> None:
    unset = load_config(make_config(PROMPTS, generator={"model": str(checked_sd)}))
    assert "safety_checker" not in unset.model_dump(mode="json")["generator"]
    kept = load_config(make_config(PROMPTS, generator={"model": str(checked_sd), "safety_checker": True}))
    off = load_config(make_config(PROMPTS, generator={"model": str(checked_sd), "safety_checker": False}))
    assert len({unset.result_hash(), kept.result_hash(), off.result_hash()}) == 3


def test_adaptive_n_counts_flagged_candidates_as_not_eligible(
    make_config, tiny_sd: Path, tmp_path: Path
) -> None:
    from winnow.models.testing import build_tiny_checker_pipeline

    flags_all = build_tiny_checker_pipeline(tiny_sd, tmp_path / "flags-all", flag_all=True)
    candidates = {"min": 2, "max": 4, "until_kept": 1}
    config = load_config(
        make_config(
            PROMPTS[:2], generator={"model": str(flags_all), "steps": 2}, run={"candidates": candidates}
        )
    )
    rows = run(config)
    assert rows.groupby("prompt_id").size().tolist() == [4, 4]  # every round ran: nothing was eligible
    assert rows["safety_flagged"].all() and not rows["kept"].any()
    assert rows["reject_reason"].eq("safety_checker").all()
