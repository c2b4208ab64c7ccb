"""``winnow calibrate`` on the shapes world, with the oracle as the reviewer.

Runs ``configs/demo.yaml`` (clip_score + 0.5 × aesthetic, keep 2 of N = 8) over the world's 69
full captions with two run seeds (138 prompt runs), and labels every candidate the way a
careful reviewer would: keep the ones the oracle says show their prompt, reject the others.
Prompts are split by ``winnow.scoring.holdout.holdout_mask`` (30% held out, by prompt id, so
both seeds of a prompt are on the same side). The fit sees the labels of ``m`` training
prompt runs (a seeded random subset, 20 draws per ``m``); the held-out prompt runs are then
selected with the demo's weights and with the fitted ones, and the kept set's oracle adherence
compared. Writes ``bench/results/calibrate.json``. Run with ``python -m bench.calibrate``.

The trained head (``winnow.scoring.train_head``, what ``winnow train-head`` runs) learns from
the same ``m`` labelled training prompt runs (``HEAD_DRAWS`` draws per ``m``, seeded) on the
runs' stored CLIP image embeddings, and is scored on the held-out candidates in three
policies: the head alone; the demo's weights with the head in the aesthetic head's place
(``clip_score`` + 0.5 × head); and calibrate's fit of the two weights on the same labelled
prompt runs (in-sample head scores, so that fit leans to the head).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.quality import _judged_run
from winnow.catalog import embeddings
from winnow.models.shapes.world import all_captions
from winnow.scoring.calibrate import Choices, choices, fit, readable
from winnow.scoring.holdout import holdout_mask
from winnow.scoring.select import Policy, select
from winnow.scoring.train_head import train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "calibrate.json"
NAMES = ["aesthetic", "clip_score"]
DEMO = Policy(keep=2, weights={"clip_score": 1.0, "aesthetic": 0.5})
CLIP_ONLY = Policy(keep=2, weights={"clip_score": 1.0, "aesthetic": 0.0})
SIZES = [5, 10, 20, 40, None]  # labelled training prompt runs (None: all)
DRAWS = 20
HEAD_DRAWS = 10  # a head trains in about a second, a fit in milliseconds: fewer draws keep the bench short
HEAD_POLICIES = {  # weights over the trained head's score and clip_score
    "head_alone": {"head": 1.0, "clip_score": 0.0},
    "clip_score_plus_half_head": {"head": 0.5, "clip_score": 1.0},
}


def kept_adherence(rows: pd.DataFrame, policy: Policy, names: list[str] = NAMES) -> float:
    """Oracle adherence of the candidates ``policy`` keeps, over ``rows``' prompt runs."""
    scores = {n: rows[f"score_{n}"].to_numpy() for n in names}
    kept = select(scores, rows["group"].to_numpy(), policy).kept
    return float(rows["right"].to_numpy()[kept].mean())


def judged_runs() -> pd.DataFrame:
    """Both seeds' rows (every candidate, the oracle's ``right``, ``group`` = seed:prompt) with
    each candidate's stored CLIP image embedding (``embedding``, float32)."""
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in (0, 1):
            rows = _judged_run(all_captions(short=False), 8, Path(tmp) / f"run{s}", seed=s)
            keys = rows[["run_id", "shard_id", "candidate_id"]].itertuples(index=False)
            found, vectors = embeddings.load(Path(tmp) / f"run{s}" / "catalog", keys)
            assert found.all(), "the demo stores every candidate's embedding"
            frames.append(
                rows.assign(
                    group=[f"{s}:{p}" for p in rows["prompt_id"]], embedding=list(vectors.astype(np.float32))
                )
            )
    return pd.concat(frames, ignore_index=True).sort_values(["group", "candidate_index"], ignore_index=True)


def head_results(train_rows: pd.DataFrame, data: Choices, test: pd.DataFrame, rng) -> dict:
    """By number of labelled prompt runs: held-out kept-set adherence of the ``HEAD_POLICIES``
    and of calibrate's fit over (head, clip_score), each head trained on a random draw."""
    x_train = np.stack(train_rows["embedding"].to_numpy())
    x_test = torch.as_tensor(np.stack(test["embedding"].to_numpy()))
    demo = kept_adherence(test, DEMO)
    by_size = {}
    for m in SIZES:
        results: dict[str, list[float]] = {name: [] for name in [*HEAD_POLICIES, "calibrated_with_head"]}
        epochs = []
        for draw in range(1 if m is None else HEAD_DRAWS):
            take = np.ones(len(data.prompt_ids), bool)
            if m is not None:
                take[:] = False
                take[rng.choice(len(data.prompt_ids), size=m, replace=False)] = True
            labelled = data.subset(take)
            trained = train(replace(labelled, features=x_train[labelled.index]), seed=draw)
            epochs.append(trained.best_epoch)
            with torch.no_grad():
                rows = test.assign(score_head=trained.head(x_test).numpy())
            for name, weights in HEAD_POLICIES.items():
                results[name].append(
                    kept_adherence(rows, DEMO.model_copy(update={"weights": weights}), ["head", "clip_score"])
                )
            with torch.no_grad():
                in_sample = trained.head(torch.as_tensor(x_train)).numpy()
            scores = {"clip_score": train_rows["score_clip_score"].to_numpy(), "head": in_sample}
            decision = np.where(train_rows["right"], "keep", "reject").tolist()
            names, both = choices(scores, train_rows["group"].to_numpy(), decision, "zscore")
            w = readable(fit(both.subset(np.isin(both.prompt_ids, labelled.prompt_ids))))
            policy = DEMO.model_copy(update={"weights": dict(zip(names, map(float, w), strict=True))})
            results["calibrated_with_head"].append(kept_adherence(rows, policy, ["head", "clip_score"]))
        by_size[str(m or len(data.prompt_ids))] = {
            name: {
                "kept_adherence_mean": float(np.mean(r)),
                "kept_adherence_min": float(np.min(r)),
                "beats_demo_share": float(np.mean([a > demo for a in r])),
            }
            for name, r in results.items()
        } | {"best_epoch_mean": float(np.mean(epochs))}
    return by_size


def first_beating(by_size: dict, demo: float, method: str | None = None) -> int | None:
    """The fewest labelled prompt runs whose mean adherence beats ``demo`` (None: never)."""
    for m, result in by_size.items():
        r = result if method is None else result[method]
        if r["kept_adherence_mean"] > demo:
            return int(m)
    return None


def results(rows: pd.DataFrame) -> dict:
    """The bench's measurements on ``judged_runs()``'s rows."""
    ids = sorted(rows["prompt_id"].unique())
    held_prompts = [p for p, h in zip(ids, holdout_mask(ids, 0.3, 0), strict=True) if h]
    held = rows["prompt_id"].isin(held_prompts).to_numpy()
    test, train_rows = rows[held], rows[~held]
    decision = np.where(train_rows["right"], "keep", "reject").tolist()
    scores = {n: train_rows[f"score_{n}"].to_numpy() for n in NAMES}
    _, data = choices(scores, train_rows["group"].to_numpy(), decision, "zscore")
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
    demo = out["demo_kept_adherence"]
    heads = head_results(train_rows, data, test, np.random.default_rng(1))
    out["trained_head_by_labelled_prompt_runs"] = heads
    out["fewest_labelled_prompt_runs_beating_demo"] = {
        "calibrated": first_beating(by_size, demo),
        **{name: first_beating(heads, demo, name) for name in [*HEAD_POLICIES, "calibrated_with_head"]},
    }
    return out


def main() -> None:
    out = results(judged_runs())
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
