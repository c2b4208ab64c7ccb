"""Scheduled runs: the flow a Prefect deployment runs, and the deployment itself.

A deployment's parameters are small and serialisable: the config file's path and dotted
overrides (as ``winnow run``'s options set them). Each run reads the config when it starts,
so edits to the file, new prompts in a pool and new rows in the catalog all count, and then
runs it the one way every config runs (``run_curate``) as a child flow run of this one.

Each scheduled run gets its own run id, ``<scheduled start, UTC>-<flow run id[-8:]>`` (e.g.
``20260301-030000-7f7fb3fd``), hence its own partition ``runs/<run_id>/`` in the catalog. A
retry of the same flow run keeps its id, so it resumes instead of starting over. At most one
run of a deployment runs at a time (a run that comes due meanwhile waits), so every run
sees the catalog rows of the runs before it and picks new prompts.

Under ``winnow serve`` each flow run runs in a process of its own, started by serve's Prefect
runner; that process leaves serve's process group, so a terminal's Ctrl-C reaches serve alone.
Serve then stops as Prefect's runner stops at SIGTERM: it sends each running flow run one
SIGTERM (its shards stop cleanly, as under ``winnow run``), waits for it to end, marks it
cancelled, pauses the schedule (the next ``winnow serve`` resumes it) and exits. A signal to a
flow run's process alone ends that flow run as crashed; serve keeps serving.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from datetime import UTC
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.runtime import flow_run
from prefect.schedules import Cron
from pydantic import ValidationError

from winnow.catalog.contact_sheet import run_contact_sheet
from winnow.flows.curate import RunSummary, run_curate
from winnow.models.errors import first_line
from winnow.pipeline.config import Config, ConfigError, load_config

FLOW_NAME = "curate-scheduled"


@flow(name=FLOW_NAME, log_prints=False)
def scheduled_curate(config: str, overrides: dict[str, Any] | None = None) -> RunSummary:
    """One scheduled run of ``config`` (a YAML path; ``overrides``: dotted key -> value)."""
    if multiprocessing.parent_process() is not None and os.getpgrp() != os.getpid():
        os.setpgrp()  # a process of serve's runner: see the module docstring
    overrides = dict(overrides or {})
    check_schedulable(load_config(config, overrides), config, overrides)
    cfg = load_config(config, {**overrides, "run.run_id": scheduled_run_id()})
    summary = run_curate(cfg)  # a signal to this flow run's process ends it as crashed
    if cfg.run.contact_sheet:
        try:
            run_contact_sheet(summary.catalog, summary.run_id)
        except Exception as err:  # the catalog is complete: the run succeeded
            get_run_logger().warning(f"the contact sheet was not written: {first_line(err)}")
    return summary


def serve(deployment: RunnerDeployment) -> None:
    """Serve ``deployment`` until Ctrl-C, SIGTERM or SIGHUP; each stops it gracefully (see the
    module docstring; Prefect's runner does so only at SIGTERM)."""
    import prefect

    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop_serving)
    prefect.serve(deployment, print_starting_message=False)


def _stop_serving(signum: int, frame: object) -> None:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # the runner has not started: nothing runs
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGTERM)  # the runner's handler: it cancels the running flow runs


def scheduled_run_id() -> str:
    """``<scheduled start, UTC, to the second>-<last 8 hex digits of the flow run id>``.

    The last digits: flow run ids are UUIDv7s, whose first digits are a timestamp shared by
    every run the scheduler creates in one pass."""
    start = flow_run.scheduled_start_time.astimezone(UTC)
    return f"{start:%Y%m%d-%H%M%S}-{str(flow_run.id)[-8:]}"


def check_schedulable(cfg: Config, path: str | Path, overrides: dict[str, Any] | None = None) -> None:
    """A scheduled config leaves the run id to each run."""
    if "run.run_id" in (overrides or {}) or cfg.run.run_id is not None:
        raise ConfigError(f"{path}: run.run_id is set, but each scheduled run names itself; remove it")


def build_deployment(
    config: Path,
    cron: str,
    name: str | None = None,
    timezone: str = "UTC",
    overrides: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """The deployment that runs ``config`` on ``cron`` (in ``timezone``), named ``name``
    (default: the config file's stem). Checks the config first."""
    check_schedulable(load_config(config, overrides), config, overrides)
    try:
        return scheduled_curate.to_deployment(
            name=name or config.stem,
            schedule=Cron(cron, timezone=timezone),
            parameters={"config": str(config.resolve()), "overrides": overrides or {}},
            description=f"winnow: curate {config} on cron {cron!r} ({timezone})",
            tags=["winnow"],
            concurrency_limit=1,  # a run due while one runs waits, then sees its catalog rows
            entrypoint_type=EntrypointType.MODULE_PATH,  # works wherever winnow is installed
        )
    except ValueError as err:  # pydantic's ValidationError is one too
        why = err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err).strip()
        why = why.removeprefix("Value error, ")
        raise ConfigError(f"cannot schedule {config} on cron {cron!r} ({timezone}): {why}") from None
