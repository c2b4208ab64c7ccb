"""``winnow calibrate`` on the shapes world, with the oracle as the reviewer.

Runs ``configs/demo.yaml`` (clip_score + 0.5 × aesthetic, keep 2 of N = 8) over the world's 69
full captions with two run seeds (138 prompt runs), and labels every candidate the way a
careful reviewer would: keep the ones the oracle says show their prompt, reject the others.
Prompts are split by ``winnow.scoring.holdout.holdout_mask`` (30% held out, by prompt id, so
both seeds of a prompt are on the same side). The fit sees the labels of ``m`` training
prompt runs (a seeded random subset, 20 draws per ``m``); the held-out prompt runs are then
selected with the demo's weights and with the fitted ones, and the kept set's oracle adherence
compared. Writes ``bench/results/calibrate.json``. Run with ``python -m bench.calibrate``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.quality import _judged_run
from winnow.models.shapes.world import all_captions
from winnow.scoring.calibrate import choices, fit, readable
from winnow.scoring.holdout import holdout_mask
from winnow.scoring.select import Policy, select

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "calibrate.json"
NAMES = ["aesthetic", "clip_score"]
DEMO = Policy(keep=2, weights={"clip_score": 1.0, "aesthetic": 0.5})
CLIP_ONLY = Policy(keep=2, weights={"clip_score": 1.0, "aesthetic": 0.0})
SIZES = [5, 10, 20, 40, None]  # labelled training prompt runs (None: all)
DRAWS = 20


def kept_adherence(rows: pd.DataFrame, policy: Policy) -> float:
    """Oracle adherence of the candidates ``policy`` keeps, over ``rows``' prompt runs."""
    scores = {n: rows[f"score_{n}"].to_numpy() for n in NAMES}
    kept = select(scores, rows["group"].to_numpy(), policy).kept
    return float(rows["right"].to_numpy()[kept].mean())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        frames = [
            _judged_run(all_captions(short=False), 8, Path(tmp) / f"run{s}", seed=s).assign(
                group=lambda d, s=s: [f"{s}:{p}" for p in d["prompt_id"]]
            )
            for s in (0, 1)
        ]
    rows = pd.concat(frames, ignore_index=True).sort_values(["group", "candidate_index"], ignore_index=True)
    ids = sorted(rows["prompt_id"].unique())
    held_prompts = [p for p, h in zip(ids, holdout_mask(ids, 0.3, 0), strict=True) if h]
    held = rows["prompt_id"].isin(held_prompts).to_numpy()
    test, train = rows[held], rows[~held]
    decision = np.where(train["right"], "keep", "reject").tolist()
    scores = {n: train[f"score_{n}"].to_numpy() for n in NAMES}
    _, data = choices(scores, train["group"].to_numpy(), decision, "zscore")
    rng = np.random.default_rng(0)
    by_size = {}
    for m in SIZES:
        draws = 1 if m is None else DRAWS
        results = []
        for _ in range(draws):
            take = np.ones(len(data.prompt_ids), bool)
            if m is not None:
                take[:] = False
                take[rng.choice(len(data.prompt_ids), size=m, replace=False)] = True
            w = readable(fit(data.subset(take)))
            policy = DEMO.model_copy(update={"weights": dict(zip(NAMES, map(float, w), strict=True))})
            results.append((kept_adherence(test, policy), w.tolist()))
        by_size[str(m or len(data.prompt_ids))] = {
            "kept_adherence_mean": float(np.mean([r[0] for r in results])),
            "kept_adherence_min": float(np.min([r[0] for r in results])),
            "beats_demo_share": float(np.mean([r[0] > kept_adherence(test, DEMO) for r in results])),
            "weights_example": dict(zip(NAMES, results[0][1], strict=True)),
        }
    out = {
        "held_out_prompt_runs": int(test["group"].nunique()),
        "train_prompt_runs_with_preference": len(data.prompt_ids),
        "train_prompt_runs_skipped": data.skipped,
        "single": float(test["right"].mean()),
        "demo_kept_adherence": kept_adherence(test, DEMO),
        "clip_score_only": kept_adherence(test, CLIP_ONLY),
        "calibrated_by_labelled_prompt_runs": by_size,
    }
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
