"""Near-duplicate removal, measured: on the bundled shapes world, on injected copies, and on
1M synthetic embeddings. Writes ``bench/results/dedup.json``::

    shapes       per keep (2, 4) and threshold: the share of kept pairs of a prompt whose
                 stored embeddings have cosine >= the threshold, and the kept set's oracle
                 adherence, without and with ``select.dedup`` (one generation, selected twice
                 from the catalog's scores and stored embeddings); at keep 2 also with
                 ``select.dedup.phash`` (8 and 16 bits, hashes of the saved images); and the
                 cosine and pHash distance distributions of all candidate pairs within a prompt
    injected     the same prompts and seeds in a second run: share of its kept rows that
                 ``winnow dedup`` marks duplicates of the first run's
    synthetic    1M 768-d L2-normalised embeddings in clusters (within-cluster cosine ~0.75)
                 with planted near-copies (cosine ~0.98): recall and precision of the planted
                 pairs, seconds for the pair search (faiss) and the grouping; and the faiss
                 search against the exact one on a 50k subset

Run with ``python -m bench.dedup`` (``--synthetic 200000`` for a shorter run). Not a test:
the seconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from winnow.catalog.dedup import decide, dedup_catalog, pairs_exact, pairs_faiss
from winnow.catalog.embeddings import load
from winnow.catalog.manifest import generated_manifest, write_manifest
from winnow.catalog.query import read_catalog
from winnow.models.shapes import oracle
from winnow.models.shapes.world import all_captions
from winnow.pipeline.config import Config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.shard import plan_shards, process_shard
from winnow.scoring.phash import perceptual_hashes
from winnow.scoring.select import Dedup, Policy, select

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "dedup.json"
THRESHOLDS = (0.95, 0.97, 0.98, 0.99)
PHASH = (8, 16)  # bits of 64, with keep 2


def _run(config: Config, run_id: str, prompt_file: Path, limit: int | None = None) -> None:
    prompts = read_prompts(prompt_file)[:limit]
    write_manifest(config.run.out, generated_manifest(config, run_id, len(prompts)))
    for plan in plan_shards(run_id, prompts, config.run.shard_size):
        process_shard(config, plan)


def _kept_pairs_above(kept: np.ndarray, groups: np.ndarray, x: np.ndarray, cosine: float) -> float:
    pairs = [
        float(x[a] @ x[b])
        for g in np.unique(groups)
        for a, b in itertools.combinations(np.flatnonzero(kept & (groups == g)), 2)
    ]
    return float(np.mean(np.array(pairs) >= cosine)) if pairs else float("nan")


def shapes(workdir: Path, n: int, injected: int) -> dict:
    """The shapes world's 69 captions x ``n`` candidates, then a copy of ``injected`` prompts."""
    prompt_file = workdir / "prompts.txt"
    prompt_file.write_text("\n".join(all_captions(short=False)) + "\n")
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["prompts"] = {"path": str(prompt_file)}
    data["run"].update(out=str(workdir / "catalog"), candidates=n, save_rejected=True, contact_sheet=False)
    config = Config.model_validate(data)
    began = time.perf_counter()
    _run(config, "shapes", prompt_file)
    seconds = time.perf_counter() - began
    root = Path(config.run.out)
    rows = pd.read_parquet(root / "runs" / "shapes").sort_values(["prompt_id", "candidate_index"])
    rows = rows.reset_index(drop=True)
    found, x = load(root, zip(rows["run_id"], rows["shard_id"], rows["candidate_id"], strict=True))
    assert found.all()
    x = x.astype(np.float32)
    pixels = [np.asarray(Image.open(root / p).convert("RGB")) for p in rows["image_path"]]
    right = np.array([oracle.adherence(img, t) for img, t in zip(pixels, rows["prompt"], strict=True)])
    hashes = perceptual_hashes(torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2) / 255)
    groups = rows["prompt_id"].to_numpy()
    scores = {c.removeprefix("score_"): rows[c].to_numpy() for c in rows.columns if c.startswith("score_")}
    ids = rows["candidate_id"].tolist()
    pairs = [
        (a, b) for g in np.unique(groups) for a, b in itertools.combinations(np.flatnonzero(groups == g), 2)
    ]
    within = [float(x[a] @ x[b]) for a, b in pairs]
    bits = [int((hashes[a] != hashes[b]).sum()) for a, b in pairs]
    table = []
    for keep, phash in [(2, None), *((2, b) for b in PHASH), (4, None)]:
        plain = Policy(keep=keep, weights=config.select.weights)
        before = select(scores, groups, plain)
        for cosine in THRESHOLDS:
            dedup = Dedup(cosine=cosine, phash=phash)
            after = select(scores, groups, plain.model_copy(update={"dedup": dedup}), x, ids, hashes)
            table.append(
                {
                    "keep": keep,
                    "cosine": cosine,
                    "phash": phash,
                    "pairs_above_before": _kept_pairs_above(before.kept, groups, x, cosine),
                    "pairs_above_after": _kept_pairs_above(after.kept, groups, x, cosine),
                    "adherence_before": float(right[before.kept].mean()),
                    "adherence_after": float(right[after.kept].mean()),
                    "kept_before": int(before.kept.sum()),
                    "kept_after": int(after.kept.sum()),
                    "near_duplicates": sum(str(r).startswith("near_duplicate") for r in after.reason),
                }
            )
    # Injected copies: the same prompts and seeds again under another run id.
    _run(config, "copy", prompt_file, injected)
    result = dedup_catalog(root, cosine=0.99)
    rows = read_catalog(root).query("kept")
    keeper = {}  # row -> the row its group keeps
    for r in rows.itertuples():
        row = (r.run_id, r.candidate_id)
        keeper[row] = row if r.dedup_kept else (r.duplicate_of_run, r.duplicate_of)
    copies = rows[rows["run_id"] == "copy"]["candidate_id"]
    caught = np.array([keeper[("copy", c)] == keeper.get(("shapes", c)) for c in copies])
    return {
        "candidates_per_prompt": n,
        "prompts": len(np.unique(groups)),
        "generation_seconds": round(seconds, 1),
        "within_prompt_cosine": {
            q: float(np.quantile(within, p))
            for q, p in (("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
        "within_prompt_phash_bits": {
            q: float(np.quantile(bits, p))
            for q, p in (("p1", 0.01), ("p10", 0.1), ("median", 0.5), ("p90", 0.9))
        },
        "selection": table,
        "injected": {
            "prompts": injected,
            "copied_kept_rows": len(copies),  # each in one group with its original
            "found": float(caught.mean()),
            "cosine": 0.99,
            "groups": result.decisions.groups,
            "method": result.decisions.method,
        },
    }  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic(n: int, d: int = 768, planted: int = 10_000, cosine: float = 0.95, seed: int = 0) -> dict:
    """``n`` clustered unit vectors with ``planted`` near-copies; faiss pairs vs the plant."""
    load_average = os.getloadavg()[0]  # the machine is shared: its load says how busy the cores were
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((max(1, n // 100), d), dtype=np.float32))
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks: bounded temporaries
        size = min(100_000, n - start)
        pick = rng.integers(len(centres), size=size)
        noise = rng.standard_normal((size, d), dtype=np.float32) * (0.58 / np.sqrt(d))
        x[start : start + size] = _unit(centres[pick] + noise)  # cosine to its centre ~0.86
    sources = rng.choice(n, size=2 * planted, replace=False)
    a, b = np.sort(sources[:planted]), sources[planted:]
    noise = rng.standard_normal((planted, d), dtype=np.float32) * (0.2 / np.sqrt(d))
    x[b] = _unit(x[a] + noise)  # cosine ~0.98
    truth = {(min(p, q), max(p, q)) for p, q in zip(a.tolist(), b.tolist(), strict=True)}

    ids = [str(k) for k in range(n)]
    began = time.perf_counter()
    decisions = decide([""] * n, ids, np.zeros(n), x, cosine)  # what winnow dedup runs, faiss above 50k
    seconds = time.perf_counter() - began
    keeper = np.arange(n)
    dropped = ~decisions.table["dedup_kept"].to_numpy(zero_copy_only=False)
    keeper[dropped] = np.array(decisions.table["duplicate_of"].filter(dropped).to_pylist(), dtype=np.int64)
    caught = sum(keeper[p] == keeper[q] for p, q in truth)
    in_plant = np.zeros(n, dtype=bool)
    in_plant[a], in_plant[b] = True, True
    sub = min(n, 20_000)
    began = time.perf_counter()
    exact = set(zip(*(v.tolist() for v in pairs_exact(x[:sub], cosine)), strict=True))
    exact_seconds = time.perf_counter() - began
    approx = set(zip(*(v.tolist() for v in pairs_faiss(x[:sub], cosine)), strict=True))
    return {
        "embeddings": n,
        "dim": d,
        "planted_pairs": planted,
        "cosine": cosine,
        "method": decisions.method,
        "recall_planted": caught / len(truth),  # both rows of a planted pair in one group
        "rows_marked_outside_the_plant": int((dropped & ~in_plant).sum()),
        "rows_marked": int(dropped.sum()),
        "seconds": round(seconds, 1),  # pair search + grouping + the decision table
        "load_average_at_start": round(load_average, 2),
        "subset": {
            "embeddings": sub,
            "exact_pairs": len(exact),
            "faiss_recall_vs_exact": len(approx & exact) / max(len(exact), 1),
            "exact_seconds": round(exact_seconds, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--injected", type=int, default=24, help="prompts copied into a second run")
    parser.add_argument("--synthetic", type=int, default=1_000_000)
    args = parser.parse_args()
    load_avg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        world = shapes(Path(tmp), args.candidates, args.injected)
    # --synthetic 0 keeps the synthetic section of the last results (its run takes ~10 minutes).
    kept = json.loads(RESULTS.read_text())["synthetic"] if not args.synthetic and RESULTS.exists() else None
    result = {
        "shapes": world,
        "synthetic": kept or synthetic(args.synthetic),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load_avg},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
