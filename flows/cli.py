"""The ``winnow`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from winnow.flows.commands import register
from winnow.flows.console import make_console, one_line_errors
from winnow.flows.schedule_cli import register as register_schedule

app = typer.Typer(
    help="Generate N candidates per prompt, score them, keep the best, catalog everything.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = make_console(stderr=True)


def quiet_libraries() -> None:
    """Keep Prefect's and the model libraries' chatter out of the user's way.

    Set before Prefect is imported; a user's own environment settings win.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Flow and task logs still reach Prefect's API (the UI); the terminal gets winnow's own
    # progress, summary and one-line errors. PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO
    # brings Prefect's console logs back.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


class RateColumn(ProgressColumn):
    """Candidates per second since the bar started (batches can take longer than rich's
    30-second speed window, so its windowed estimate would often be empty)."""

    def render(self, task: Task) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:.2f} img/s" if rate else "… img/s", style="progress.data.speed")


@app.callback()
def main() -> None:
    quiet_libraries()


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="run config (YAML)")],
    prompts: Annotated[Path | None, typer.Option(help="prompt file (overrides prompts.path)")] = None,
    out: Annotated[Path | None, typer.Option(help="catalog folder (overrides run.out)")] = None,
    n: Annotated[int | None, typer.Option("-n", "--candidates", help="candidates per prompt")] = None,
    keep: Annotated[int | None, typer.Option("-k", "--keep", help="kept per prompt")] = None,
    seed: Annotated[int | None, typer.Option(help="run seed")] = None,
    run_id: Annotated[str | None, typer.Option(help="run id (default: hash of config + prompts)")] = None,
    limit: Annotated[int | None, typer.Option(help="use only the first N prompts")] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps")] = None,
    batch_size: Annotated[int | None, typer.Option(help="candidates per pipeline call")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default auto)")] = None,
    workers: Annotated[int | None, typer.Option(help="shards processed concurrently")] = None,
    runner: Annotated[str | None, typer.Option(help="task runner: threads or ray")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto, ray://HOST:10001 or HOST:6379 (default: local)")
    ] = None,
) -> None:
    """Generate, score and select candidates for every prompt; write the catalog.

    Ctrl-C or SIGTERM stops it within a pipeline call, keeping the finished shards (exit status
    130 or 143; a second signal exits at once); the same command resumes it.
    """
    from prefect.exceptions import TerminationSignal

    from winnow.flows import interrupt
    from winnow.models.errors import first_line
    from winnow.pipeline.config import load_config

    overrides = {
        "prompts.path": prompts,
        "prompts.limit": limit,
        "run.out": out,
        "run.candidates": n,
        "run.seed": seed,
        "run.run_id": run_id,
        "select.keep": keep,
        "generator.steps": steps,
        "generator.batch_size": batch_size,
        "generator.device": device,
        "runner.workers": workers,
        "runner.kind": runner,
        "runner.address": address,
    }
    with interrupt.handling(), one_line_errors():  # finished shards stay written
        try:
            cfg = load_config(config, {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()})
            summary = _run_with_progress(cfg)
        except interrupt.RunInterrupted as err:
            console.print(f"[yellow]interrupted[/]: {err}; run the same command to resume", highlight=False)
            raise typer.Exit(interrupt.exit_status()) from None
        except (KeyboardInterrupt, TerminationSignal):  # a signal before the flow's handlers were set
            console.print("[yellow]interrupted[/]: finished shards are kept; run the same command to resume")
            raise typer.Exit(interrupt.exit_status()) from None
    _print_summary(summary)
    warnings = list(summary.warnings)  # the catalog is complete: a failed extra is only a warning
    if cfg.run.contact_sheet:
        from winnow.catalog.contact_sheet import run_contact_sheet

        try:
            sheet = run_contact_sheet(summary.catalog, summary.run_id)
        except Exception as err:
            warnings.append(f"the contact sheet was not written: {first_line(err)}")
        else:
            console.print(f"contact sheet: [bold]{sheet}[/]")
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"catalog: [bold]{summary.catalog}[/] (run {summary.run_id})")


def _run_with_progress(cfg):  # -> RunSummary
    from winnow.flows import progress
    from winnow.flows.curate import run_curate

    columns = (
        TextColumn("[bold]generating"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("candidates", total=0)  # the flow announces it via progress.report

        def show(done: int, more: int) -> None:
            bar.update(task, advance=done, total=bar.tasks[task].total + more)

        progress.listen(show)
        try:
            return run_curate(cfg)
        finally:
            progress.listen(None)


def _print_summary(s) -> None:
    from winnow.catalog.summary import SUMMARY_STATS

    table = Table(title=f"winnow run {s.run_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # a long catalog path wraps on a terminal, never cut short
    table.add_row("prompts", str(s.prompts))
    table.add_row("candidates", str(s.candidates))
    table.add_row("kept", f"{s.kept} ({s.kept / max(s.candidates, 1):.0%})")
    table.add_row("shards", f"{s.shards} ({s.skipped_shards} already done, skipped)")
    table.add_row("wall time", f"{s.seconds:.1f} s")
    table.add_row("images/s", f"{s.images_per_s:.2f} (generated + scored this run: {s.generated})")
    table.add_row("catalog", str(s.catalog))
    console.print(table)
    scores = Table(title="scores: kept vs rejected (finite values)", title_justify="left")
    columns = ("score", "group", *SUMMARY_STATS)
    for col in columns:
        scores.add_column(col, justify="left" if col in ("score", "group") else "right")
    for row in s.scores:
        scores.add_row(*(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    console.print(scores)
    for note in s.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


register(app)  # catalog stats/query, regenerate, export, report, score
register_schedule(app)  # serve, deploy

if __name__ == "__main__":
    sys.exit(app())
