"""Plan shards and process one: generate, score, select, write. Plain functions, no Prefect.

A shard is a fixed group of prompts (one task, one Parquet part). Its id is its position in
the prompt list, so re-running the same run plans the same shards, and a shard whose part
already exists is complete and skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from catalog.schema import SCHEMA_VERSION, schema, score_column
from catalog.writer import image_relpath, part_path, write_part, write_png
from flows.config import Config
from flows.prompts import Prompt
from models.generator import Generator, Request, candidate_seed, to_uint8
from scoring.base import Candidates, build_scorers
from scoring.select import select

VERSIONS = json.dumps(
    {p: version(p) for p in ("winnow", "torch", "diffusers", "transformers", "open_clip_torch")},
    sort_keys=True,
)


@dataclass(frozen=True)
class ShardPlan:
    """A task's input: ids and the prompts' records (small, serialisable)."""

    run_id: str
    shard_id: str
    prompts: tuple[Prompt, ...]


@dataclass(frozen=True)
class ShardResult:
    shard_id: str
    part: str
    candidates: int
    kept: int
    skipped: bool


def default_run_id(config: Config, prompts: list[Prompt]) -> str:
    """Hash of the content-determining config and the prompts: the same command, the same run."""
    digest = hashlib.sha256(config.result_hash().encode())
    for p in prompts:
        digest.update(f"{p.id}\x1e".encode())
    return digest.hexdigest()[:12]


def plan_shards(run_id: str, prompts: list[Prompt], shard_size: int) -> list[ShardPlan]:
    return [
        ShardPlan(run_id, f"{i // shard_size:05d}", tuple(prompts[i : i + shard_size]))
        for i in range(0, len(prompts), shard_size)
    ]


def process_shard(
    config: Config, plan: ShardPlan, on_progress: Callable[[int], None] | None = None
) -> ShardResult:
    """Generate, score and select the shard's candidates, then write its images and part."""
    root = Path(config.run.out)
    part = part_path(root, plan.run_id, plan.shard_id)
    n = config.run.candidates
    if part.exists():
        if on_progress:
            on_progress(len(plan.prompts) * n)
        return ShardResult(plan.shard_id, str(part), len(plan.prompts) * n, 0, skipped=True)

    generator = Generator(config.generator)
    scorers = build_scorers(config.scorers, generator.device)
    for scorer in scorers:
        scorer.setup()
    owners = [p for p in plan.prompts for _ in range(n)]
    requests = [
        Request(p.text, p.negative, candidate_seed(config.run.seed, p.id, k))
        for p in plan.prompts
        for k in range(n)
    ]
    pixels, gen_seconds, score_seconds, batch_index = [], [], [], []
    scores: dict[str, list[torch.Tensor]] = {s.name: [] for s in scorers}
    for batch in generator.generate(requests):
        size = len(batch.images)
        began = time.perf_counter()
        candidates = Candidates(batch.images, [r.prompt for r in requests[batch.start : batch.start + size]])
        for scorer in scorers:
            scores[scorer.name].append(scorer.score(candidates))
        score_time = time.perf_counter() - began
        pixels.append(to_uint8(batch.images).numpy())
        gen_seconds += [batch.seconds / size] * size
        score_seconds += [score_time / size] * size
        batch_index += [batch.index] * size
        if on_progress:
            on_progress(size)

    score_arrays = {name: torch.cat(parts).double().numpy() for name, parts in scores.items()}
    chosen = select(score_arrays, np.array([p.id for p in owners]), config.select)
    images = np.concatenate(pixels)
    paths: list[str | None] = []
    hashes: list[str | None] = []
    for i, prompt in enumerate(owners):
        candidate_id = f"{prompt.id}-{i % n:03d}"
        if chosen.kept[i] or config.run.save_rejected:
            rel = image_relpath(plan.run_id, candidate_id)
            hashes.append(write_png(root, rel, images[i]))
            paths.append(rel)
        else:
            paths.append(None)
            hashes.append(None)

    identity = generator.identity
    rows = len(owners)
    size = config.generator.batch_size
    columns = {
        "schema_version": [SCHEMA_VERSION] * rows,
        "run_id": [plan.run_id] * rows,
        "shard_id": [plan.shard_id] * rows,
        "prompt_id": [p.id for p in owners],
        "candidate_id": [f"{p.id}-{i % n:03d}" for i, p in enumerate(owners)],
        "candidate_index": [i % n for i in range(rows)],
        "prompt": [p.text for p in owners],
        "negative_prompt": [p.negative for p in owners],
        "prompt_meta": [p.meta_json for p in owners],
        "seed": [r.seed for r in requests],
        "batch_index": batch_index,
        "batch_position": [i % size for i in range(rows)],
        "batch_size": [size] * rows,
        **{key: [value] * rows for key, value in identity.items()},
        **{score_column(name): values for name, values in score_arrays.items()},
        "combined_score": chosen.combined,
        "rank": chosen.rank,
        "kept": chosen.kept,
        "reject_reason": chosen.reason,
        "image_path": paths,
        "image_sha256": hashes,
        "generation_seconds": gen_seconds,
        "scoring_seconds": score_seconds,
        "created_at": [datetime.now(UTC)] * rows,
        "config_hash": [config.result_hash()] * rows,
        "versions": [VERSIONS] * rows,
    }
    write_part(part, pa.table(columns, schema=schema(score_arrays)))
    return ShardResult(plan.shard_id, str(part), rows, int(chosen.kept.sum()), skipped=False)
