"""``winnow score``: a folder of existing images through the same shards and engine as a
generated run (``pipeline/images.py`` is the source), one shard after another in this process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from winnow.catalog.compact import compact_finished
from winnow.catalog.manifest import embedding_record, external_manifest, write_manifest
from winnow.pipeline.images import scan
from winnow.pipeline.score_config import ScoreConfig
from winnow.pipeline.shard import plan_shards, process_shard


@dataclass(frozen=True)
class ScoreResult:
    run_id: str
    catalog: Path
    images: int  # rows in the catalog for this run
    kept: int
    shards: int
    skipped_shards: int  # shards already in the catalog (resumed)
    skipped: tuple[tuple[str, str], ...]  # (file, why) of the files left out
    warnings: tuple[str, ...] = ()  # one line each: the run is in the catalog, an extra failed


def score_folder(
    folder: str | Path,
    prompts_from: str,
    config: ScoreConfig,
    root: str | Path | None = None,
    run_id: str | None = None,
    device: str = "auto",
) -> ScoreResult:
    """Score the images under ``folder`` with ``config``'s scorers and policy and catalog them
    at ``root`` (default ``run.out``); ``prompts_from``: sidecar, csv:FILE or filename."""
    job = scan(folder, prompts_from, config, root or config.run.out, device, run_id)
    settings = config.model_dump(mode="json", include={"scorers", "select", "run"})
    prompts = len(job.prompts)
    manifest = external_manifest(
        job.run_id, settings, job.config_hash, folder, prompts_from, prompts, embedding_record(config)
    )
    write_manifest(job.root, manifest)  # before any part; also removes a killed run's temp files
    results = [
        process_shard(job, plan) for plan in plan_shards(job.run_id, job.prompts, config.run.shard_size)
    ]
    warning = compact_finished(job.root, job.run_id) if config.run.compact else None
    return ScoreResult(
        run_id=job.run_id,
        catalog=job.root,
        images=sum(r.candidates for r in results),
        kept=sum(r.kept for r in results),
        shards=len(results),
        skipped_shards=sum(r.skipped for r in results),
        skipped=job.skipped,
        warnings=(warning,) if warning else (),
    )
