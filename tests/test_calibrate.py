"""``winnow calibrate``: the conditional-logit fit recovers known weights from a simulated
reviewer, and the command reads labels and the run's policy, reports held-out agreement and
writes ``select.weights`` into a config without losing its comments."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from ruamel.yaml import YAML

from tests.helpers import invoke
from winnow.catalog.labels import Decision, write_labels
from winnow.catalog.manifest import Manifest, ModelRef, PromptSource, write_manifest
from winnow.catalog.schema import Row, candidate_id, table
from winnow.catalog.writer import image_relpath, part_path, write_part
from winnow.scoring.calibrate import agreement, choices, fit, readable
from winnow.scoring.holdout import holdout_mask, wilson
from winnow.scoring.select import _normalize

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NAMES = ["aesthetic", "clip_score", "pickscore"]  # sorted: the feature order
TRUE = np.array([1.0, -0.5, 0.3])


def reviewer(prompts: int, n: int, seed: int, noise: float = 0.3):
    """Raw scores of ``prompts`` x ``n`` candidates on differing scales, and the decisions of a
    reviewer who keeps the argmax of the true weighted z-scores plus Gumbel noise."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(prompts * n, 3)) * [2.0, 0.05, 10.0] + [6.0, 0.3, 20.0]
    groups = np.repeat([f"p{i:04d}" for i in range(prompts)], n)
    decision = []
    for p in range(prompts):
        block = raw[p * n : (p + 1) * n]
        z = np.column_stack([_normalize(block[:, j], "zscore") for j in range(3)])
        best = np.argmax(z @ TRUE + noise * rng.gumbel(size=n))
        decision += ["keep" if i == best else "reject" for i in range(n)]
    return {name: raw[:, j] for j, name in enumerate(NAMES)}, groups, decision


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_fit_recovers_known_weights_and_beats_wrong_ones_held_out():
    scores, groups, decision = reviewer(400, 8, seed=1)
    names, data = choices(scores, groups, decision, "zscore")
    assert names == NAMES and len(data.prompt_ids) == 400 and data.skipped == 0
    held = holdout_mask(data.prompt_ids, 0.3, seed=0)
    train, test = data.subset(~held), data.subset(held)
    w = fit(train)
    assert cosine(w, TRUE) >= 0.98
    wrong = np.array([-1.0, 1.0, 0.0])
    before, after = agreement(test, wrong)[0], agreement(test, readable(w))[0]
    assert after > before + 0.3 * len(test.prompt_ids)
    assert readable(w).max() == 1.0 or readable(w).min() == -1.0


def test_rank_normalisation_and_unlabelled_or_unanimous_prompts():
    scores, groups, decision = reviewer(300, 6, seed=2)
    decision[:6] = ["reject"] * 6  # the first prompt: no preference
    decision[6:12] = [None] * 6  # the second: not reviewed
    _, data = choices(scores, groups, decision, "rank")
    assert data.skipped == 1 and len(data.prompt_ids) == 298 and "p0000" not in data.prompt_ids
    assert cosine(fit(data), TRUE) >= 0.95  # rank features are coarser than the z-scores the reviewer used
    assert data.features.min() >= 0 and data.features.max() <= 1


def test_split_is_stable_and_wilson_interval():
    ids = [f"p{i}" for i in range(1000)]
    mask = holdout_mask(ids, 0.3, seed=0)
    assert 250 < mask.sum() < 350
    assert (holdout_mask(ids[::-1], 0.3, seed=0) == mask[::-1]).all()
    assert (holdout_mask(ids, 0.3, seed=1) != mask).any()
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def make_run(root, prompts: int, n: int = 6, seed: int = 3, labels: str = "reviewer"):
    """A run ``r1`` with a manifest whose policy weighs aesthetic 0 and clip_score 1 (wrong for
    a reviewer who likes aesthetic and dislikes clip_score), and labels per ``labels``."""
    scores, groups, decision = reviewer(prompts, n, seed)
    rows, decisions = [], []
    for k, prompt_id in enumerate(groups):
        i = k % n
        cid = candidate_id(prompt_id, i)
        rows.append(
            Row(
                run_id="r1", source="generated", shard_id="0000", prompt_id=prompt_id,
                candidate_id=cid, candidate_index=i, prompt=f"prompt {prompt_id}", negative_prompt="",
                prompt_meta="{}", config_hash="h", rank=i + 1, kept=i == 0,
                reject_reason=None if i == 0 else "not_top_k", image_path=image_relpath("r1", cid),
                image_sha256="0" * 64, combined_score=float(n - i), created_at=T0,
                scores={name: float(scores[name][k]) for name in NAMES},
            )
        )  # fmt: skip
        what = decision[k] if labels == "reviewer" else labels
        decisions.append(Decision("r1", prompt_id, cid, what))
    write_part(part_path(root, "r1", "0000"), table(rows, NAMES))
    weights = {"aesthetic": 0.0, "clip_score": 1.0, "pickscore": 0.0}
    select = {"keep": 1, "weights": weights, "normalize": "zscore"}
    write_manifest(
        root,
        Manifest(
            run_id="r1", source="generated", config={"scorers": {n: {} for n in NAMES}, "select": select},
            config_hash="h", models={"generator.model": ModelRef(ref="m", fingerprint="f")},
            versions={}, prompts=PromptSource(kind="template", prompts=prompts), created_at=T0,
        ),
    )  # fmt: skip
    write_labels(root, decisions, "ann", now=T0)
    return root


CONFIG = """\
# my run
select:
  keep: 1   # one per prompt
  weights: {clip_score: 1.0}
run:
  out: out/x
"""


def test_cli_reports_agreement_and_writes_weights_keeping_comments(tmp_path):
    root = make_run(tmp_path / "cat", prompts=60)
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    result = invoke("calibrate", root, "--write", config)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    shares = [int(line.split(": ")[1].split("/")[0]) for line in lines if "top-1 agreement" in line]
    assert len(shares) == 2 and shares[1] > shares[0]
    assert "95% Wilson" in result.output
    text = config.read_text()
    assert "# my run" in text and "# one per prompt" in text and "out: out/x" in text
    weights = YAML(typ="safe").load(text)["select"]["weights"]
    assert set(weights) == set(NAMES) and weights["aesthetic"] == 1.0 and weights["clip_score"] < 0
    printed = invoke("calibrate", root)  # without --write: the mapping to paste
    assert printed.exit_code == 0 and "weights: {aesthetic: 1" in printed.output


def test_cli_errors_are_one_line(tmp_path):
    root = make_run(tmp_path / "few", prompts=6)
    result = invoke("calibrate", root)
    assert result.exit_code == 2 and "needs at least 5 on each side" in result.output
    assert len(result.output.strip().splitlines()) == 1

    root = make_run(tmp_path / "unanimous", prompts=30, labels="reject")
    result = invoke("calibrate", root)
    assert result.exit_code == 2 and "30 skipped: all keep or all reject" in result.output

    empty = tmp_path / "none"
    make_run(empty, prompts=3)
    for part in (empty / "labels").iterdir():
        part.unlink()
    result = invoke("calibrate", empty)
    assert result.exit_code == 2 and "no labels" in result.output

    result = invoke("calibrate", make_run(tmp_path / "ok", prompts=40), "--write", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "no such config file" in result.output
