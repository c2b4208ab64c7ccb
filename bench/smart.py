"""Smart compute on the bundled shapes world, judged by its exact oracle: early pruning (a curve
over the pruning point f and the dropped share p) and adaptive N, each against the plain run
of ``configs/demo.yaml`` over the same prompts, measured side by side in one process.

    python -m bench.smart                  # 69 prompts x 8 -> bench/results/smart.json
    python -m bench.smart --prompts 8      # quick look

Cost is reported three ways: wall seconds and process CPU seconds per kept image (both move
with whatever else runs on the machine), and UNet candidate-steps per kept image (exact: a
survivor runs every step, a pruned candidate the first S).
"""

from __future__ import annotations

import os

# Waiting OpenMP threads sleep instead of spinning, so CPU seconds count work, not waiting
# (and a busy machine slows the runs less); set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from bench.cpu import cpu_name
from flows.config import Config
from flows.prompts import read_prompts
from flows.shard import plan_shards, process_shard
from models.shapes import oracle
from models.shapes.world import all_captions
from scoring.select import select

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "smart.json"
GRID = [(f, p) for f in (0.2, 0.3, 0.5) for p in (0.5, 0.75)]
ROUNDS = {"min": 2, "max": 8, "until_kept": 1}


def run(data: dict[str, Any], out: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """Run ``data`` (a config mapping) into ``out``; its rows (with oracle verdicts for the
    images written) and its cost."""
    data = copy.deepcopy(data)
    data["run"]["out"] = str(out)
    config = Config.model_validate(data)
    prompts = read_prompts(config.prompts.path)
    wall, cpu = time.perf_counter(), time.process_time()
    for plan in plan_shards("bench", prompts, config.run.shard_size):
        process_shard(config, plan)
    cost = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    rows = pd.read_parquet(out / "runs")
    rows["right"] = [
        oracle.adherence(np.asarray(Image.open(out / r.image_path).convert("RGB")), r.prompt)
        if isinstance(r.image_path, str)
        else np.nan
        for r in rows.itertuples()
    ]
    at = rows["reject_reason"].astype("string").str.extract(r"^pruned_at_step:(\d+)$")[0].astype(float)
    cost["unet_steps"] = float(at.fillna(rows["steps"].astype(float)).sum())
    return rows, cost


def summary(rows: pd.DataFrame, cost: dict[str, float]) -> dict[str, float]:
    kept = rows[rows["kept"]]
    n = max(len(kept), 1)
    return {
        "candidates": len(rows),
        "kept": len(kept),
        "kept_adherence": float(kept["right"].mean()),
        "best_adherence": float(kept.loc[kept.groupby("prompt_id")["rank"].idxmin(), "right"].mean()),
        "wall_s_per_kept": cost["wall_s"] / n,
        "cpu_s_per_kept": cost["cpu_s"] / n,
        "unet_steps_per_kept": cost["unet_steps"] / n,
        "candidates_per_kept": len(rows) / n,
    }


def reselect(rows: pd.DataFrame, data: dict[str, Any]) -> pd.DataFrame:
    """``rows`` with the kept set the policy ``data['select']`` gives (same candidates)."""
    policy = Config.model_validate(data).select
    scores = {c.removeprefix("score_"): rows[c].to_numpy() for c in rows if c.startswith("score_")}
    chosen = select(scores, rows["prompt_id"].to_numpy(), policy)
    return rows.assign(kept=chosen.kept, rank=chosen.rank)


def measure(prompts: int, tmp: Path, grid: list[tuple[float, float]] = GRID) -> dict[str, Any]:
    captions = all_captions(short=False)[:prompts]
    prompt_file = tmp / "prompts.txt"
    prompt_file.write_text("\n".join(captions) + "\n")
    base = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    base["prompts"] = {"path": str(prompt_file)}
    base["run"]["save_rejected"] = True  # every finished image gets the oracle's verdict
    base["run"]["candidates"] = 8
    steps = base["generator"]["steps"]

    run(base | {"prompts": {"path": str(prompt_file), "limit": 2}}, tmp / "warm-up")  # model loads
    plain_rows, plain_cost = run(base, tmp / "plain")
    plain = summary(plain_rows, plain_cost)
    curve = []
    for f, p in grid:
        data = base | {"prune": {"at": f, "drop": p}}
        rows, cost = run(data, tmp / f"prune-{f}-{p}")
        s = summary(rows, cost)
        curve.append(
            {
                "at": f,
                "drop": p,
                "step": round(f * steps),
                **s,
                "speedup_wall": plain["wall_s_per_kept"] / s["wall_s_per_kept"],
                "speedup_cpu": plain["cpu_s_per_kept"] / s["cpu_s_per_kept"],
                "speedup_unet": plain["unet_steps_per_kept"] / s["unet_steps_per_kept"],
                "adherence_delta_points": 100 * (s["kept_adherence"] - plain["kept_adherence"]),
            }
        )

    # Adaptive N: a floor at the plain run's median CLIP score, keep 1. The fixed-N policy is
    # the same candidates re-selected (generation is identical), so its cost is the plain run's.
    floor = float(plain_rows["score_clip_score"].median())
    policy = {**base["select"], "keep": 1, "floors": {"clip_score": floor}}
    fixed_rows = reselect(plain_rows, base | {"select": policy})
    fixed = summary(fixed_rows, plain_cost)
    adaptive_run = {**base["run"], "candidates": ROUNDS}
    rows, cost = run(base | {"select": policy, "run": adaptive_run}, tmp / "adaptive")
    adaptive = summary(rows, cost)
    rounds = rows.groupby("prompt_id")["round"].max().add(1).value_counts().sort_index()
    adaptive["prompts_by_rounds"] = {int(k): int(v) for k, v in rounds.items()}

    return {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_start": os.getloadavg()},
        "settings": {"prompts": len(captions), "candidates": 8, "steps": steps, "config": "demo.yaml"},
        "plain": plain,
        "pruning": curve,
        "adaptive": {
            "floor_clip_score": floor,
            "keep": 1,
            "rounds_config": ROUNDS,
            "fixed_8": fixed,
            "adaptive": adaptive,
            "candidates_per_kept_ratio": fixed["candidates_per_kept"] / adaptive["candidates_per_kept"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=len(all_captions(short=False)))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.prompts, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
