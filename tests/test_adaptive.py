"""Adaptive N: rounds stop exactly when a prompt has enough eligible candidates or reaches
``max``, candidates equal those of a fixed-N run, progress adds up. Tiny models, CPU."""

import numpy as np
import pandas as pd
import pytest

from tests.helpers import run_shards
from winnow.flows import progress
from winnow.pipeline.config import ConfigError, load_config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.regenerate import check_row
from winnow.pipeline.shard import plan_shards, process_shard

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a cat", "a dog"]
MIN, MAX = 2, 6


def expected_rows(fixed: pd.DataFrame, floor: float) -> dict[str, int]:
    """Rows per prompt that the rounds should make, from the fixed-N run's scores."""
    rows = {}
    for prompt, group in fixed.groupby("prompt_id"):
        ok = (group.sort_values("candidate_index")["score_clip_score"] >= floor).to_numpy()
        n = MIN
        while n < MAX and not ok[:n].any():
            n += MIN
        rows[prompt] = n
    return rows


def test_rounds_stop_when_a_prompt_has_enough(make_config, tmp_path):
    path = make_config(PROMPTS, run={"candidates": MAX, "shard_size": 3}, select={"keep": 1})
    fixed = run_shards(load_config(path))
    # A floor that sends some prompts to a second or third round and lets others stop early.
    scores = np.sort(fixed["score_clip_score"].to_numpy())
    for floor in (scores[:-1] + scores[1:])[len(scores) // 2 :] / 2:
        want = expected_rows(fixed, floor)
        if len(set(want.values())) >= 2:
            break
    assert len(set(want.values())) >= 2

    seen = {"done": 0, "expected": 0}

    def count(done: int, more: int) -> None:
        seen["done"] += done
        seen["expected"] += more

    rounds = {"min": MIN, "max": MAX, "until_kept": 1}
    overrides = {"run.candidates": rounds, "select.floors": {"clip_score": float(floor)}}
    config = load_config(path, overrides | {"run.out": str(tmp_path / "a"), "run.save_rejected": True})
    progress.listen(count)
    try:
        progress.report(0, len(PROMPTS) * MIN)  # what the flow announces
        adaptive = run_shards(config)
    finally:
        progress.listen(None)

    assert adaptive.groupby("prompt_id").size().to_dict() == want
    assert seen == {"done": len(adaptive), "expected": len(adaptive)}
    assert (adaptive["round"] == adaptive["candidate_index"] // MIN).all()
    # Pipeline calls are numbered across rounds, so a later round's candidate regenerates exactly.
    assert check_row(tmp_path / "a", adaptive.sort_values("round")["candidate_id"].iloc[-1]).match
    # The same candidates as the fixed run (seeds, pixels, scores up to batch rounding).
    same = fixed.set_index("candidate_id").loc[adaptive["candidate_id"]]
    assert (adaptive["seed"].to_numpy() == same["seed"].to_numpy()).all()
    np.testing.assert_allclose(adaptive["score_clip_score"], same["score_clip_score"], atol=1e-3)
    # Every prompt keeps one candidate if any clears the floor, and the best of them.
    for _, group in adaptive.groupby("prompt_id"):
        eligible = group[group["score_clip_score"] >= floor]
        assert group["kept"].sum() == min(1, len(eligible))
        if len(eligible):
            assert group.loc[group["kept"], "combined_score"].max() == group["combined_score"].max()


def test_skipped_shards_report_their_rows(make_config):
    path = make_config(PROMPTS, run={"candidates": {"min": 1, "max": 3}, "shard_size": 5})
    config = load_config(path, {"select.floors": {"clip_score": 1e9}})  # nothing passes: all reach max
    run_shards(config)
    seen = []
    progress.listen(lambda done, more: seen.append((done, more)))
    try:
        (plan,) = plan_shards("run", read_prompts(config.prompts.path), 5)
        assert process_shard(config, plan, on_progress=progress.report).skipped
    finally:
        progress.listen(None)
    assert seen == [(15, 10)]  # 5 prompts x 3 rows written; 5 x 1 were announced up front


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ({"min": 4, "max": 2}, "run.candidates: min 4 is above max 2"),
        ({"min": 0, "max": 2}, r"run.candidates.min: Input should be greater than or equal to 1 \(got 0\)"),
        ({"min": 1, "max": 2, "until": 1}, "unknown key 'run.candidates.until'"),
        (0, r"run.candidates: Input should be greater than 0 \(got 0\)"),
    ],
)
def test_bad_candidates_are_one_line_errors(make_config, candidates, message):
    with pytest.raises(ConfigError, match=message):
        load_config(make_config(PROMPTS, run={"candidates": candidates}))
