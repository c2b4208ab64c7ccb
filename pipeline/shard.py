"""Plan shards and process one: its source's candidates through the engine, then its part.
Plain functions, no Prefect: the ``curate`` flow maps ``process_shard`` over Prefect tasks,
``winnow score`` runs it shard after shard in its own process.

A shard is a fixed group of prompts (one task, one Parquet part). Its id is its position in
the prompt list, so re-running the same run plans the same shards, and a shard whose part
already exists (or that the run's ``_compacted.json`` lists) is complete and skipped.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from winnow.catalog.compact import STATE, compacted_counts, is_compacted, planned_shards
from winnow.catalog.schema import table
from winnow.catalog.writer import part_path, write_part
from winnow.models.sources import resolve
from winnow.pipeline.config import Config
from winnow.pipeline.engine import Progress, ShardPlan, run_shard
from winnow.pipeline.generated import GeneratedSource
from winnow.pipeline.images import ImageJob, ImageSource
from winnow.pipeline.prompts import Prompt


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


def plan_shards(run_id: str, prompts: list[Prompt] | tuple[Prompt, ...], shard_size: int) -> list[ShardPlan]:
    ids = planned_shards(len(prompts), shard_size)
    return [
        ShardPlan(run_id, shard_id, tuple(prompts[i * shard_size : (i + 1) * shard_size]))
        for i, shard_id in enumerate(ids)
    ]


def process_shard(
    config: Config | ImageJob, plan: ShardPlan, on_progress: Progress | None = None
) -> ShardResult:
    """Make (generate, or read the images of an ``ImageJob``), score and select the shard's
    candidates, then write its images and part; a shard whose part exists, or that its run's
    compaction lists (``winnow.catalog.compact``), is skipped."""
    source = ImageSource(config, plan) if isinstance(config, ImageJob) else GeneratedSource(config, plan)
    part = part_path(source.settings.root, plan.run_id, plan.shard_id)
    done = _done(part, plan.shard_id)
    if done is not None:
        where, candidates, kept = done
        if on_progress:
            on_progress(candidates, candidates - source.expected())
        return ShardResult(plan.shard_id, where, candidates, kept, skipped=True)

    rows = run_shard(source, on_progress)
    written = datetime.now(UTC)
    for row in rows:
        row.created_at = written
    if is_compacted(part):  # a concurrent resume of this run finished and compacted it meanwhile
        done = _done(part, plan.shard_id)
        return ShardResult(plan.shard_id, done[0], done[1], done[2], skipped=True)
    write_part(part, table(rows, source.settings.scorers))
    kept = sum(r.kept for r in rows)
    return ShardResult(
        plan.shard_id, str(part), len(rows), kept, skipped=False, oom_retries=source.oom_retries
    )


def _done(part: Path, shard_id: str) -> tuple[str, int, int] | None:
    """(where its rows are, candidates, kept) of a shard already written, else None: its part,
    or its run's compacted files (``_compacted.json`` lists it)."""
    try:
        kept = pq.read_table(part, columns=["kept"])["kept"]
        return str(part), len(kept), int(pc.sum(kept).as_py() or 0)
    except FileNotFoundError:  # never written, or compacted (even while this looked)
        pass
    counts = compacted_counts(part.parent).get(shard_id)
    if counts is None:
        return None
    return str(part.parent / STATE), *counts
