"""Smart compute on the bundled shapes world, judged by its exact oracle: early pruning (a curve
over the pruning point f and the dropped share p) and adaptive N, each against the plain run
of ``configs/demo.yaml`` over the same prompts, measured side by side in one process.

    python -m bench.smart                          # 69 prompts x 4 run seeds x 8 -> bench/results/smart.json
    python -m bench.smart --prompts 8 --seeds 1    # quick look

Every arm runs the prompts once per run seed (``run.seed`` 0, 1, ...): a prompt under one seed
is one *instance*, with its own 8 candidates. One instance's kept image is 1/instances of the
adherence, so several seeds make a 1-point difference measurable; each point also reports
how many kept images turned right and wrong against the plain run's, instance by instance.

Shards hold 32 prompts (``demo.yaml`` has 8): a pruned call starts with whole prompts so that
its survivors fill a batch (``Prune.call_size``), and a shard of 8 prompts would cap them at
8 x survivors (24 for 3 survivors, where the plain run's batches hold 32). The plain run's
batches are the same either way.

Previews are decoded by the pipeline's VAE over the whole grid, and by the bundled tiny
decoder (``prune.preview: bundled:shapes-preview``) at the points nearest the 2x target.

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
from winnow.models.shapes import oracle
from winnow.models.shapes.world import all_captions
from winnow.pipeline.config import Config, PruneConfig
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.shard import plan_shards, process_shard
from winnow.scoring.select import Policy, select

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "smart.json"
# (prune.at, prune.drop, prune.preview): the curve with full-VAE previews, and the tiny
# preview decoder where the curve comes nearest to 2x within 1 point.
TINY = "bundled:shapes-preview"
GRID = [(f, p, "vae") for f in (0.1, 0.15, 0.2, 0.3) for p in (0.5, 0.625, 0.75)]
GRID += [(f, 0.625, TINY) for f in (0.15, 0.2, 0.3)]
SEEDS = 4
SHARD_SIZE = 32
KEEPS = (1, 2)
ROUNDS = [{"min": 2, "max": 8, "until_kept": 1}, {"min": 2, "max": 8, "until_kept": 2}]


def run(data: dict[str, Any], out: Path, seeds: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Run ``data`` (a config mapping) into ``out`` once per run seed; its rows (with the
    instance they belong to and the oracle's verdict on every finished image) and its cost."""
    cost, parts = {"wall_s": 0.0, "cpu_s": 0.0}, []
    for seed in range(seeds):
        folder = out / f"seed-{seed}"
        config = copy.deepcopy(data)
        config["run"].update(out=str(folder), seed=seed, save_rejected=True)
        config = Config.model_validate(config)
        wall, cpu = time.perf_counter(), time.process_time()
        for plan in plan_shards("bench", read_prompts(config.prompts.path), config.run.shard_size):
            process_shard(config, plan)
        cost["wall_s"] += time.perf_counter() - wall
        cost["cpu_s"] += time.process_time() - cpu
        part = pd.read_parquet(folder / "runs")
        part["instance"] = f"{seed}:" + part["prompt_id"]
        part["right"] = [
            oracle.adherence(np.asarray(Image.open(folder / r.image_path).convert("RGB")), r.prompt)
            if isinstance(r.image_path, str)
            else np.nan
            for r in part.itertuples()
        ]
        parts.append(part)
    rows = pd.concat(parts, ignore_index=True)
    at = rows["reject_reason"].astype("string").str.extract(r"^pruned_at_step:(\d+)$")[0].astype(float)
    rows["pruned"] = at.notna()
    cost["unet_steps"] = float(at.fillna(rows["steps"].astype(float)).sum())
    return rows, cost


def keep(rows: pd.DataFrame, select_section: dict[str, Any]) -> pd.DataFrame:
    """The finished (unpruned) rows, selected again by ``select_section``: a run's candidates
    serve every policy, since selection does not change what is generated."""
    live = rows[~rows["pruned"]]
    policy = Policy.model_validate(select_section)
    scores = {c.removeprefix("score_"): live[c].to_numpy() for c in live if c.startswith("score_")}
    chosen = select(scores, live["instance"].to_numpy(), policy)
    return live[chosen.kept]


def summary(kept: pd.DataFrame, cost: dict[str, float], candidates: int) -> dict[str, float]:
    n = max(len(kept), 1)
    return {
        "kept": len(kept),
        "kept_adherence": float(kept["right"].mean()),
        "wall_s_per_kept": cost["wall_s"] / n,
        "cpu_s_per_kept": cost["cpu_s"] / n,
        "unet_steps_per_kept": cost["unet_steps"] / n,
        "candidates_per_kept": candidates / n,
    }


def versus(s: dict[str, float], plain: dict[str, float]) -> dict[str, float]:
    """How many times less each cost is than the plain run's, and the adherence change."""
    return {
        **{f"speedup_{c}": plain[f"{c}_s_per_kept"] / s[f"{c}_s_per_kept"] for c in ("wall", "cpu")},
        "speedup_unet": plain["unet_steps_per_kept"] / s["unet_steps_per_kept"],
        "adherence_delta_points": 100 * (s["kept_adherence"] - plain["kept_adherence"]),
    }


def paired(kept: pd.DataFrame, plain: pd.DataFrame) -> dict[str, int]:
    """Instance by instance, how many more right kept images than the plain run's (gained)
    or fewer (lost): the adherence change is (gained - lost) / kept."""
    right = kept.groupby("instance")["right"].sum()
    change = right.sub(plain.groupby("instance")["right"].sum(), fill_value=0)
    return {"right_gained": int(change.clip(lower=0).sum()), "right_lost": int(-change.clip(upper=0).sum())}


def measure(
    prompts: int, tmp: Path, grid: list[tuple[float, float, str]] = GRID, seeds: int = SEEDS
) -> dict[str, Any]:
    captions = all_captions(short=False)[:prompts]
    prompt_file = tmp / "prompts.txt"
    prompt_file.write_text("\n".join(captions) + "\n")
    base = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    base["prompts"] = {"path": str(prompt_file)}
    base["run"].update(candidates=8, shard_size=SHARD_SIZE)
    steps = base["generator"]["steps"]
    policies = {k: {**base["select"], "keep": k} for k in KEEPS}

    run(base | {"prompts": {"path": str(prompt_file), "limit": 2}}, tmp / "warm-up", 1)  # model loads
    plain_rows, first = run(base, tmp / "plain", seeds)
    points = []
    for i, (f, p, preview) in enumerate(grid):  # `drop` leaves >= `keep` survivors: check the largest k
        data = base | {"select": policies[max(KEEPS)], "prune": {"at": f, "drop": p, "preview": preview}}
        points.append((f, p, preview, *run(data, tmp / f"prune-{i}", seeds)))
    # The plain run again, after the grid: the baseline is the mean of the two, since a single
    # run's seconds drift by several percent on a shared machine.
    _, last = run(base, tmp / "plain-again", seeds)
    plain_cost = {k: (first[k] + last[k]) / 2 for k in first}
    plain_kept = {k: keep(plain_rows, policies[k]) for k in KEEPS}
    plain = {k: summary(plain_kept[k], plain_cost, len(plain_rows)) for k in KEEPS}

    curve = []
    for f, p, preview, rows, cost in points:
        prune = PruneConfig(at=f, drop=p)
        point: dict[str, Any] = {"at": f, "drop": p, "preview": preview, "step": prune.step(steps)}
        point["survivors"] = prune.survivors(8)
        for k in KEEPS:
            kept = keep(rows, policies[k])
            s = summary(kept, cost, len(rows))
            point[f"keep_{k}"] = s | versus(s, plain[k]) | paired(kept, plain_kept[k])
        curve.append(point)

    # Adaptive N: a floor at the plain run's median CLIP score. The fixed-N side is the plain
    # run's candidates selected with that floor (generation is the same), at the plain cost.
    floor = float(plain_rows["score_clip_score"].median())
    adaptive = []
    for rounds in ROUNDS:
        policy = {**base["select"], "keep": rounds["until_kept"], "floors": {"clip_score": floor}}
        fixed = summary(keep(plain_rows, policy), plain_cost, len(plain_rows))
        data = base | {"select": policy, "run": {**base["run"], "candidates": rounds}}
        rows, cost = run(data, tmp / f"adaptive-{rounds['until_kept']}", seeds)
        s = summary(keep(rows, policy), cost, len(rows))
        by_rounds = rows.groupby("instance")["round"].max().add(1).value_counts().sort_index()
        adaptive.append(
            {
                "rounds": rounds,
                "fixed_8": fixed,
                "adaptive": s | {"instances_by_rounds": {int(k): int(v) for k, v in by_rounds.items()}},
                "candidates_per_kept_ratio": fixed["candidates_per_kept"] / s["candidates_per_kept"],
                "adherence_delta_points": 100 * (s["kept_adherence"] - fixed["kept_adherence"]),
            }
        )

    return {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_start": os.getloadavg()},
        "settings": {
            "prompts": len(captions),
            "run_seeds": seeds,
            "instances": len(captions) * seeds,
            "candidates": 8,
            "steps": steps,
            "config": "demo.yaml",
            "shard_size": SHARD_SIZE,
        },
        "plain": {f"keep_{k}": v for k, v in plain.items()},
        "plain_runs_wall_s": [first["wall_s"], last["wall_s"]],
        "pruning": curve,
        "adaptive": {"floor_clip_score": floor, "runs": adaptive},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=len(all_captions(short=False)))
    parser.add_argument("--seeds", type=int, default=SEEDS, help="run seeds per arm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.prompts, Path(tmp), seeds=args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
