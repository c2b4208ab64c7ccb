"""Plan shards and process one: generate, score, select, write. Plain functions, no Prefect.

A shard is a fixed group of prompts (one task, one Parquet part). Its id is its position in
the prompt list, so re-running the same run plans the same shards, and a shard whose part
already exists is complete and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.catalog.schema import SCHEMA_VERSION, schema, score_column
from winnow.catalog.writer import part_path, write_part
from winnow.models.sources import resolve
from winnow.pipeline.config import Config
from winnow.pipeline.engine import Progress, run_shard
from winnow.pipeline.prompts import Prompt

# Catalog columns taken as they are from the engine's rows.
ROW_COLUMNS = (
    "candidate_index",
    "round",
    "seed",
    "batch_index",
    "batch_position",
    "batch_size",
    "combined_score",
    "rank",
    "kept",
    "reject_reason",
    "image_path",
    "image_sha256",
    "generation_seconds",
    "scoring_seconds",
)
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
    """``oom_retries``: pipeline calls that ran out of device memory and were retried at half
    the batch size (the catalog's ``batch_size`` column shows the size each call ran at).
    ``worker``: the process that ran the shard, ``host:pid`` (many on a Ray cluster)."""

    shard_id: str
    part: str
    candidates: int
    kept: int
    skipped: bool
    oom_retries: int = 0
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


def default_run_id(config: Config, prompts: list[Prompt]) -> str:
    """Hash of the content-determining config, the model's weights (their fingerprint, and
    the preview decoder's when pruning uses one) and the prompts: the same command on the same
    weights, the same run. Retrained or updated weights start a new run instead of resuming
    into shards the old weights made."""
    digest = hashlib.sha256(config.result_hash().encode())
    digest.update(resolve(config.generator.model).fingerprint.encode())
    if config.prune is not None and config.prune.preview != "vae":
        digest.update(resolve(config.prune.preview, pipeline=False).fingerprint.encode())
    for p in prompts:
        digest.update(f"{p.id}\x1e".encode())
    return digest.hexdigest()[:12]


def plan_shards(run_id: str, prompts: list[Prompt], shard_size: int) -> list[ShardPlan]:
    return [
        ShardPlan(run_id, f"{i // shard_size:05d}", tuple(prompts[i : i + shard_size]))
        for i in range(0, len(prompts), shard_size)
    ]


def process_shard(config: Config, plan: ShardPlan, on_progress: Progress | None = None) -> ShardResult:
    """Generate, score and select the shard's candidates, then write its images and part."""
    root = Path(config.run.out)
    part = part_path(root, plan.run_id, plan.shard_id)
    if part.exists():
        rows = pq.read_metadata(part).num_rows
        if on_progress:
            on_progress(rows, rows - len(plan.prompts) * config.rounds.min)
        return ShardResult(plan.shard_id, str(part), rows, 0, skipped=True)

    out = run_shard(config, plan.run_id, plan.prompts, on_progress)
    prompts = [plan.prompts[r.prompt] for r in out.rows]
    n = len(out.rows)
    scorers = sorted(config.scorers)
    columns = {
        "schema_version": [SCHEMA_VERSION] * n,
        "run_id": [plan.run_id] * n,
        "source": ["generated"] * n,
        "shard_id": [plan.shard_id] * n,
        "prompt_id": [p.id for p in prompts],
        "candidate_id": [f"{p.id}-{r.candidate_index:03d}" for p, r in zip(prompts, out.rows, strict=True)],
        "prompt": [p.text for p in prompts],
        "negative_prompt": [p.negative for p in prompts],
        "prompt_meta": [p.meta_json for p in prompts],
        **{key: [value] * n for key, value in out.identity.items()},
        **{score_column(s): [r.scores[s] for r in out.rows] for s in scorers},
        **{name: [getattr(r, name) for r in out.rows] for name in ROW_COLUMNS},
        "created_at": [datetime.now(UTC)] * n,
        "config_hash": [config.result_hash()] * n,
        "versions": [VERSIONS] * n,
    }
    write_part(part, pa.table(columns, schema=schema(scorers)))
    kept = sum(r.kept for r in out.rows)
    return ShardResult(plan.shard_id, str(part), n, kept, skipped=False, oom_retries=out.oom_retries)
