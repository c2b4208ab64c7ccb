"""Write a scheduled run's deployment into a ``prefect.yaml``, for users who run workers.

The entry is the deployment ``winnow.flows.schedule.build_deployment`` builds for ``winnow serve``
(same flow, parameters, schedule, tags), plus what a worker needs: a work pool and a pull
step that sets the working directory, since a config's relative paths are relative to the
directory ``winnow`` runs in. ``prefect deploy --name NAME`` (or ``--all``) then registers
it. An existing file keeps its other entries, keys and comments (ruamel.yaml round trip);
an entry of the same name for this flow is replaced.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import prefect
from prefect.deployments.runner import RunnerDeployment
from ruamel.yaml import YAML, YAMLError

from winnow.catalog.writer import atomic_write
from winnow.models.errors import first_line
from winnow.pipeline.config import ConfigError

SET_WORKDIR = "prefect.deployments.steps.set_working_directory"


def deployment_entry(
    deployment: RunnerDeployment, config: Path, workdir: Path, pool: str | None
) -> dict[str, Any]:
    """The ``deployments:`` item for ``deployment``, its config path relative to ``workdir``."""
    config = config.resolve()
    shown = config.relative_to(workdir) if config.is_relative_to(workdir) else config
    entry: dict[str, Any] = {
        "name": deployment.name,
        "description": deployment.description,
        "tags": list(deployment.tags),
        "entrypoint": deployment.entrypoint,
        "parameters": {**deployment.parameters, "config": str(shown)},
        "schedules": [
            {"cron": s.schedule.cron, "timezone": s.schedule.timezone} for s in deployment.schedules
        ],
        "concurrency_limit": deployment.concurrency_limit,
        "pull": [{SET_WORKDIR: {"directory": str(workdir)}}],
    }
    if pool:
        entry["work_pool"] = {"name": pool, "work_queue_name": None, "job_variables": {}}
    return entry


def write_entry(file: Path, entry: dict[str, Any]) -> str:
    """Add or replace ``entry`` in ``file`` (created if missing); returns 'added' or 'updated'."""
    yaml = YAML()  # round trip: comments and key order survive
    yaml.default_flow_style = False
    if file.exists():
        try:
            data = yaml.load(file.read_text(encoding="utf-8")) or {}
        except YAMLError as err:
            raise ConfigError(f"{file}: not valid YAML ({first_line(err)})") from None
        if not isinstance(data, dict) or not isinstance(data.get("deployments") or [], list):
            raise ConfigError(f"{file}: expected a mapping with a 'deployments' list")
    else:
        data = {"prefect-version": prefect.__version__, "name": file.resolve().parent.name}
    deployments = data.get("deployments") or []
    same = [i for i, d in enumerate(deployments) if isinstance(d, dict) and d.get("name") == entry["name"]]
    for i in same:
        if deployments[i].get("entrypoint") != entry["entrypoint"]:
            raise ConfigError(
                f"{file}: deployment {entry['name']!r} already exists for another flow "
                f"({deployments[i].get('entrypoint')}); choose another --name"
            )
    if same:
        deployments[same[0]] = entry
        action = "updated"
    else:
        deployments.append(entry)
        action = "added"
    data["deployments"] = deployments
    out = io.StringIO()
    yaml.dump(data, out)
    atomic_write(file, out.getvalue().encode())
    return action
