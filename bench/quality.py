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
    preference       on the 23 prompts shapes-pick never trained on, 3 runs × N = 8:
                     best-of-8 adherence ranked by pickscore (bundled:shapes-pick) alone, by
                     clip_score alone and by the demo's weights (see ``preference``)
    scoring_cost     per image: CPU ms of each scorer on the shapes models, and GFLOP of its
                     image tower at the published models' size

Prompts are the world's 69 full captions (``--prompts K``: a seeded subset of K of them).
Run with ``make bench-quality`` (or ``python -m bench.quality --prompts 32``;
``--preference-only`` re-measures the last two sections alone).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from winnow.models.shapes import evaluate, oracle
from winnow.models.shapes.data import FULL_CAPTIONS, render_pool
from winnow.models.shapes.train_pick import HELDOUT_PROMPTS
from winnow.models.shapes.world import all_captions
from winnow.pipeline.config import Config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.shard import plan_shards, process_shard
from winnow.scoring.aesthetic import load_head
from winnow.scoring.clip import ClipSpec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "shapes.json"


def _judged_run(prompts: list[str], n: int, workdir: Path, seed: int, edit=None) -> pd.DataFrame:
    """Run ``configs/demo.yaml`` (changed by ``edit(data)``) over ``prompts`` × ``n`` through
    winnow's shard processing; every candidate's catalog row with the oracle's ``right``."""
    workdir.mkdir(parents=True, exist_ok=True)
    prompt_file = workdir / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["prompts"] = {"path": str(prompt_file)}
    data["run"].update(out=str(workdir / "catalog"), candidates=n, seed=seed, save_rejected=True)
    if edit is not None:
        edit(data)
    config = Config.model_validate(data)
    for plan in plan_shards("quality", read_prompts(prompt_file), config.run.shard_size):
        process_shard(config, plan)
    rows = pd.read_parquet(workdir / "catalog" / "runs")
    root = workdir / "catalog"
    rows["right"] = [
        oracle.adherence(np.asarray(Image.open(root / r.image_path).convert("RGB")), r.prompt)
        for r in rows.itertuples()
    ]
    return rows


def curation(prompts: int | None, n: int, workdir: Path, seed: int = 0) -> dict[str, float]:
    """Adherence of single, best, random and worst candidates over ``prompts`` × ``n``
    (``None``: every full caption of the world)."""
    captions = all_captions(short=False)
    count = len(captions) if prompts is None else prompts
    pick = np.random.default_rng(seed).choice(len(captions), size=count, replace=False)
    rows = _judged_run([captions[i] for i in sorted(pick)], n, workdir, seed)
    rng = np.random.default_rng(seed + 1)
    by_prompt = rows.groupby("prompt_id")
    return {
        "single": float(rows["right"].mean()),
        "best_of_8": float(by_prompt.apply(lambda g: g.loc[g["rank"].idxmin(), "right"]).mean()),
        "random_of_8": float(by_prompt.apply(lambda g: g["right"].iloc[rng.integers(len(g))]).mean()),
        "worst_of_8": float(by_prompt.apply(lambda g: g.loc[g["rank"].idxmax(), "right"]).mean()),
        "oracle_any_of_8": float(by_prompt["right"].any().mean()),
    }


PICK = {"model": "bundled:shapes-pick", "processor": None}


def preference(n: int, repeats: int, workdir: Path, seed: int = 0) -> dict[str, object]:
    """Best-of-``n`` adherence on the prompts ``shapes-pick`` never trained on, by ranking:
    ``pickscore`` alone, ``clip_score`` alone, and the demo's weights (``clip_score`` + 0.5 ×
    ``aesthetic``). One run per repeat (run seeds ``seed``, ``seed + 1``, ...) scores every
    candidate with all three scorers, so the rankings judge the same images."""

    def add_pick(data: dict) -> None:
        data["scorers"]["pickscore"] = dict(PICK)
        data["select"]["weights"]["pickscore"] = 0.0  # the run keeps by the demo's weights

    frames = []
    for r in range(repeats):
        rows = _judged_run(HELDOUT_PROMPTS, n, workdir / f"run{r}", seed + r, add_pick)
        frames.append(rows.assign(group=[f"{r}:{p}" for p in rows["prompt_id"]]))
    rows = pd.concat(frames, ignore_index=True).sort_values(["group", "candidate_index"])
    by_group = rows.groupby("group")

    def best_by(column: str) -> float:  # ties go to the lower candidate index, as select's do
        return float(by_group.apply(lambda g: g.loc[g[column].idxmax(), "right"]).mean())

    return {
        "best_of_8": {
            "pickscore": best_by("score_pickscore"),
            "clip_score": best_by("score_clip_score"),
            "demo": float(by_group.apply(lambda g: g.loc[g["rank"].idxmin(), "right"]).mean()),
        },
        "single": float(rows["right"].mean()),
        "oracle_any_of_8": float(by_group["right"].any().mean()),
        "groups": int(by_group.ngroups),
        "prompts": len(HELDOUT_PROMPTS),
    }


def scoring_cost(images: int = 256) -> dict[str, dict[str, float]]:
    """What each scorer costs per image: CPU milliseconds on the shapes models (32x32, one
    scorer alone, its embedding not shared; best of three), and GFLOP of the image tower at
    the published models' size (224x224, counted by PyTorch's FlopCounterMode on the
    architecture built without weights; the text tower runs once per prompt, not counted)."""
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from winnow.scoring.base import Candidates, build_scorers
    from winnow.scoring.pickscore import PickScoreParams, PickScoreScorer

    x, _ = render_pool(images, 77)
    demo = Config.model_validate(yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()))
    scorers = [*build_scorers(demo.scorers, torch.device("cpu"))]
    scorers.append(PickScoreScorer(PickScoreParams(**PICK), torch.device("cpu")))
    cpu = {}
    for scorer in scorers:
        scorer.setup()
        times = []
        for _ in range(3):
            batch = Candidates(evaluate.as_tensor(x), [FULL_CAPTIONS[i % 69] for i in range(images)])
            began = time.perf_counter()
            scorer.score(batch)
            times.append(time.perf_counter() - began)
        cpu[scorer.name] = round(1000 * min(times) / images, 4)
    gflop = {}
    for names, arch in ((("clip_score", "aesthetic"), "ViT-L-14"), (("pickscore", "hpsv2"), "ViT-H-14")):
        model = open_clip.create_model(arch, pretrained=None, device="meta")
        with FlopCounterMode(display=False) as counter:
            model.encode_image(torch.zeros(1, 3, 224, 224, device="meta"))
        for name in names:
            gflop[name] = round(counter.get_total_flops() / 1e9, 1)
    return {"cpu_ms_per_image_shapes": cpu, "gflop_per_image_real_size": gflop}


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


def measure_preference(n: int = 8, repeats: int = 3, seed: int = 0) -> dict[str, object]:
    """The ``preference`` and ``scoring_cost`` sections (``seconds``: their wall time)."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, object] = {"preference": preference(n, repeats, Path(tmp), seed)}
    result["scoring_cost"] = scoring_cost()
    result["preference"]["seconds"] = round(time.perf_counter() - began, 1)  # type: ignore[index]
    return result


def measure(prompts: int | None = None, n: int = 8, renders: int = 1000, seed: int = 0) -> dict:
    """Every metric plus the run's settings (``seconds``: wall time of the whole run)."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = curation(prompts, n, Path(tmp), seed) | models_quality(renders)
    result |= measure_preference(n, seed=seed)
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
    parser.add_argument(
        "--preference-only",
        action="store_true",
        help="measure only the preference and scoring_cost sections, keeping the rest of --out",
    )
    args = parser.parse_args()
    if args.preference_only:
        result = (json.loads(args.out.read_text()) if args.out.exists() else {}) | measure_preference()
    else:
        result = measure(args.prompts, renders=args.renders)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
