"""Helpers the tests share: the CLI in process, and a run without Prefect."""

from __future__ import annotations

import pandas as pd
from click.testing import Result
from typer.testing import CliRunner

from winnow.catalog.manifest import generated_manifest, write_manifest
from winnow.catalog.query import read_catalog
from winnow.flows import progress
from winnow.flows.cli import app
from winnow.pipeline.config import Config
from winnow.pipeline.prompt_source import choose_prompts
from winnow.pipeline.shard import plan_shards, process_shard


def invoke(*args: object) -> Result:
    """Run ``winnow ARGS...`` in this process (arguments are turned into strings)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def run_shards(config: Config, run_id: str = "run") -> pd.DataFrame:
    """Run ``config`` as the curate flow does, without Prefect: its manifest, then each shard
    in order, reporting progress to ``winnow.flows.progress``. Returns the run's catalog rows
    sorted by candidate id.

    A fixed ``run_id`` (not the config's hash) lets runs of two configs be compared row by row.
    """
    prompts = choose_prompts(config).prompts
    write_manifest(config.run.out, generated_manifest(config, run_id, len(prompts)))
    for plan in plan_shards(run_id, prompts, config.run.shard_size):
        process_shard(config, plan, on_progress=progress.report)
    return read_catalog(config.run.out, run_id).sort_values("candidate_id", ignore_index=True)
