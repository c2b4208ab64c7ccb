"""Curation quality on the bundled shapes world, judged by its exact oracle.

Runs winnow's own shard processing (generation, scoring, default policy of
``configs/demo.yaml``) over world captions, reads every candidate back from the catalog, and
asks the oracle whether it shows what its prompt says. Writes ``bench/results/shapes.json``::

    single           adherence of single samples (all candidates)
    best_of_8        adherence of the candidate winnow ranks first
    random_of_8      adherence of a random candidate per prompt (seeded)
    worst_of_8       adherence of the candidate winnow ranks last
    oracle_any_of_8  share of prompts with at least one right candidate (selection's ceiling)
    vae_roundtrip    oracle accuracy on VAE reconstructions of clean renders
    clip_zero_shot   tiny CLIP's zero-shot accuracy (colour, shape and background all right)
    aesthetic_spearman  Spearman of the aesthetic head vs -degradation level

Prompts are the world's 69 full captions (``--prompts K``: a seeded subset of K of them).
Run with ``make bench-quality`` (or ``python -m bench.quality --prompts 32``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from winnow.models.shapes import evaluate, oracle
from winnow.models.shapes.world import all_captions
from winnow.pipeline.config import Config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.shard import plan_shards, process_shard
from winnow.scoring.aesthetic import load_head
from winnow.scoring.clip import ClipSpec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "shapes.json"


def curation(prompts: int | None, n: int, workdir: Path, seed: int = 0) -> dict[str, float]:
    """Adherence of single, best, random and worst candidates over ``prompts`` × ``n``
    (``None``: every full caption of the world)."""
    captions = all_captions(short=False)
    count = len(captions) if prompts is None else prompts
    pick = np.random.default_rng(seed).choice(len(captions), size=count, replace=False)
    prompt_file = workdir / "prompts.txt"
    prompt_file.write_text("\n".join(captions[i] for i in sorted(pick)) + "\n")
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["prompts"] = {"path": str(prompt_file)}
    data["run"].update(out=str(workdir / "catalog"), candidates=n, seed=seed, save_rejected=True)
    config = Config.model_validate(data)
    for plan in plan_shards("quality", read_prompts(prompt_file), config.run.shard_size):
        process_shard(config, plan)
    rows = pd.read_parquet(workdir / "catalog" / "runs")
    root = workdir / "catalog"
    rows["right"] = [
        oracle.adherence(np.asarray(Image.open(root / r.image_path).convert("RGB")), r.prompt)
        for r in rows.itertuples()
    ]
    rng = np.random.default_rng(seed + 1)
    by_prompt = rows.groupby("prompt_id")
    return {
        "single": float(rows["right"].mean()),
        "best_of_8": float(by_prompt.apply(lambda g: g.loc[g["rank"].idxmin(), "right"]).mean()),
        "random_of_8": float(by_prompt.apply(lambda g: g["right"].iloc[rng.integers(len(g))]).mean()),
        "worst_of_8": float(by_prompt.apply(lambda g: g.loc[g["rank"].idxmax(), "right"]).mean()),
        "oracle_any_of_8": float(by_prompt["right"].any().mean()),
    }


def models_quality(renders: int) -> dict[str, float]:
    """VAE round trip, CLIP zero-shot and aesthetic Spearman on held-out clean renders."""
    from winnow.models.generator import GeneratorParams, load_pipeline

    pipe = load_pipeline(GeneratorParams(model="bundled:shapes-sd", device="cpu"))
    clip = ClipSpec(model="bundled:shapes-clip")
    head = load_head("bundled:shapes-aesthetic", "cpu")
    return {
        "vae_roundtrip": evaluate.vae_roundtrip(pipe.vae, n=renders),
        "clip_zero_shot": evaluate.clip_zero_shot(clip, n=renders)["exact"],
        "aesthetic_spearman": evaluate.aesthetic_spearman(clip, head, n=renders)["spearman"],
    }


def measure(prompts: int | None = None, n: int = 8, renders: int = 1000, seed: int = 0) -> dict:
    """Every metric plus the run's settings (``seconds``: wall time of the whole run)."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = curation(prompts, n, Path(tmp), seed) | models_quality(renders)
    result["settings"] = {
        "prompts": prompts or len(all_captions(short=False)),
        "candidates": n,
        "renders": renders,
        "seed": seed,
        "config": "configs/demo.yaml",
        "seconds": round(time.perf_counter() - began, 1),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="default: all 69 full captions")
    parser.add_argument("--renders", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.prompts, renders=args.renders)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
