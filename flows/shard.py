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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa

from catalog.schema import SCHEMA_VERSION, schema, score_column
from catalog.writer import part_path, write_part
from flows.config import Config
from flows.engine import ShardCandidates, run_shard
from flows.prompts import Prompt
from models.generator import Request, candidate_seed

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

    owners = [p for p in plan.prompts for _ in range(n)]
    requests = [
        Request(p.text, p.negative, candidate_seed(config.run.seed, p.id, k))
        for p in plan.prompts
        for k in range(n)
    ]
    candidate_ids = [f"{p.id}-{i % n:03d}" for i, p in enumerate(owners)]
    shard = ShardCandidates(plan.run_id, candidate_ids, [p.id for p in owners], requests, n)
    out = run_shard(config, shard, on_progress)
    chosen = out.selection

    rows = len(owners)
    columns = {
        "schema_version": [SCHEMA_VERSION] * rows,
        "run_id": [plan.run_id] * rows,
        "source": ["generated"] * rows,
        "shard_id": [plan.shard_id] * rows,
        "prompt_id": [p.id for p in owners],
        "candidate_id": candidate_ids,
        "candidate_index": [i % n for i in range(rows)],
        "prompt": [p.text for p in owners],
        "negative_prompt": [p.negative for p in owners],
        "prompt_meta": [p.meta_json for p in owners],
        "seed": [r.seed for r in requests],
        "batch_index": out.batch_index,
        "batch_position": out.batch_position,
        "batch_size": out.batch_size,
        **{key: [value] * rows for key, value in out.identity.items()},
        **{score_column(name): values for name, values in out.scores.items()},
        "combined_score": chosen.combined,
        "rank": chosen.rank,
        "kept": chosen.kept,
        "reject_reason": chosen.reason,
        "image_path": out.image_path,
        "image_sha256": out.image_sha256,
        "generation_seconds": out.generation_seconds,
        "scoring_seconds": out.scoring_seconds,
        "created_at": [datetime.now(UTC)] * rows,
        "config_hash": [config.result_hash()] * rows,
        "versions": [VERSIONS] * rows,
    }
    write_part(part, pa.table(columns, schema=schema(out.scores)))
    return ShardResult(
        plan.shard_id, str(part), rows, int(chosen.kept.sum()), skipped=False, oom_retries=out.oom_retries
    )
