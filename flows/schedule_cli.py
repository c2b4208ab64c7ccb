"""CLI commands for scheduled runs: ``winnow serve`` and ``winnow deploy``.

Registered into the ``winnow`` app by ``winnow.flows.cli``. Both check the config and its prompt
source first (one-line errors, exit status 2), so a bad template or a missing pool file
shows up now rather than at 3 a.m.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from winnow.flows.console import err_console, one_line_errors

CRON_HELP = 'cron expression, e.g. "0 3 * * *" (03:00 every day)'
NAME_HELP = "deployment name (default: the config's file name)"


def serve_command(
    config: Annotated[Path, typer.Argument(help="run config (YAML), read again by every run")],
    cron: Annotated[str, typer.Option(help=CRON_HELP)],
    name: Annotated[str | None, typer.Option(help=NAME_HELP)] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron schedule")] = "UTC",
) -> None:
    """Serve the curate flow of CONFIG as a Prefect deployment on a cron schedule (until Ctrl-C).

    Needs a Prefect server (its scheduler creates the runs): `prefect server start`, then
    PREFECT_API_URL=http://127.0.0.1:4200/api. The deployment shows in the Prefect UI.
    """
    from prefect.settings import PREFECT_API_URL

    from winnow.flows.schedule import FLOW_NAME, build_deployment, serve
    from winnow.pipeline.config import ConfigError, load_config
    from winnow.pipeline.prompt_source import describe

    with one_line_errors():
        if not PREFECT_API_URL.value():
            raise ConfigError(
                "winnow serve needs a Prefect server, whose scheduler creates the runs: start one with "
                "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
        deployment = build_deployment(config, cron, name, timezone)
        source = describe(load_config(config))
    full = f"{FLOW_NAME}/{deployment.name}"
    err_console.print(f"serving [bold]{full}[/] on cron {cron!r} ({timezone}); prompts: {source}")
    err_console.print(f"run one now: prefect deployment run '{full}'. Ctrl-C stops serving.", highlight=False)
    serve(deployment)


def deploy_command(
    config: Annotated[Path, typer.Argument(help="run config (YAML), read again by every run")],
    cron: Annotated[str, typer.Option(help=CRON_HELP)],
    name: Annotated[str | None, typer.Option(help=NAME_HELP)] = None,
    pool: Annotated[str | None, typer.Option(help="work pool of the workers that run it")] = None,
    file: Annotated[Path, typer.Option(help="prefect.yaml to write or update")] = Path("prefect.yaml"),
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron schedule")] = "UTC",
) -> None:
    """Write (or update) CONFIG's scheduled deployment in prefect.yaml, for Prefect workers.

    Then: `prefect deploy --name NAME` registers it, and a worker of the pool runs it.
    """
    from winnow.flows.prefect_yaml import deployment_entry, write_entry
    from winnow.flows.schedule import build_deployment
    from winnow.pipeline.config import load_config
    from winnow.pipeline.prompt_source import describe

    with one_line_errors():
        deployment = build_deployment(config, cron, name, timezone)
        source = describe(load_config(config))
        entry = deployment_entry(deployment, config, Path.cwd(), pool)
        action = write_entry(file, entry)
    err_console.print(f"{action} deployment [bold]{deployment.name}[/] in {file}; prompts: {source}")
    then = f"prefect deploy --prefect-file {file} --name {deployment.name}"
    if pool is None:
        then += " --pool WORK_POOL"
    err_console.print(f"next: {then}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add these commands to the ``winnow`` app."""
    app.command("serve")(serve_command)
    app.command("deploy")(deploy_command)
