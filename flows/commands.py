"""CLI commands over an existing catalog: stats, query, compact, regenerate, export, report,
score, rescore, dedup.

Registered into the ``winnow`` app by ``winnow.flows.cli`` (``register(app)``). Heavy imports happen
inside the commands, so ``winnow --help`` stays fast. Errors are one line (``error: ...``,
exit status 2, or 1 for a file system error: ``winnow.flows.console.one_line_errors``);
``regenerate`` exits 1 when the image does not match its recorded hash.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from winnow.flows.calibrate_cli import calibrate_command
from winnow.flows.console import err_console, fail, make_console, one_line_errors
from winnow.flows.review_cli import review_command
from winnow.flows.train_head_cli import train_head_command

out_console = make_console()  # tables on stdout
DEFAULT_CATALOG = Path("out/catalog")  # run.out's default (pipeline/config.py)
TABLE_ROWS = 1000  # rows shown by `catalog query` as a table; use --format csv for all

catalog_app = typer.Typer(help="Inspect a catalog: statistics and SQL.", no_args_is_help=True)


def _split(args: list[str], what: str) -> tuple[Path, str]:
    """``[CATALOG] VALUE`` -> (catalog, value); the catalog defaults to ``out/catalog``."""
    if len(args) == 1:
        return DEFAULT_CATALOG, args[0]
    if len(args) == 2:
        return Path(args[0]), args[1]
    fail(f"expected [CATALOG] {what}, got {len(args)} arguments")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _print_frame(df, title: str | None = None) -> None:  # df: pandas.DataFrame
    table = Table(title=title, title_justify="left")
    for column in df.columns:
        table.add_column(str(column), justify="right" if df[column].dtype.kind in "iuf" else "left")
    for record in df.head(TABLE_ROWS).itertuples(index=False):
        table.add_row(*(_fmt(v) for v in record))
    out_console.print(table)
    if len(df) > TABLE_ROWS:
        err_console.print(f"({len(df) - TABLE_ROWS} more rows not shown; use --format csv or --out)")


@catalog_app.command("stats")
def stats(
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = DEFAULT_CATALOG,
    run: Annotated[str | None, typer.Option(help="only this run")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Runs, prompts, candidates, kept, acceptance rate, and score distributions per run."""
    from winnow.catalog.query import connect
    from winnow.catalog.stats import run_stats, score_stats

    with one_line_errors(), connect(catalog, run) as con:
        runs, scores = run_stats(con), score_stats(con, catalog)
    if json_out:
        import json

        data = {
            "runs": _records(runs.assign(first=runs["first"].astype(str), last=runs["last"].astype(str))),
            "scores": _records(scores),
        }
        print(json.dumps(data, indent=2))
        return
    shown = runs.drop(columns=["first", "last"]).assign(acceptance=runs["acceptance"].map("{:.1%}".format))
    _print_frame(shown, "runs")
    _print_frame(scores.assign(score=scores["score"].str.removeprefix("score_")), "scores (finite values)")


def _records(df) -> list[dict]:
    import json

    return json.loads(df.to_json(orient="records"))


@catalog_app.command("query")
def query(
    args: Annotated[list[str], typer.Argument(metavar="[CATALOG] SQL", help="SQL over the view `catalog`")],
    format: Annotated[str, typer.Option("--format", help="table, csv, json or parquet")] = "table",
    out: Annotated[
        Path | None, typer.Option(help="write here instead of stdout (needed for parquet)")
    ] = None,
) -> None:
    """DuckDB SQL over every run of the catalog, as the view `catalog` (columns unified by name).

    Example: winnow catalog query "select run_id, avg(score_aesthetic) from catalog where kept group by 1"
    """
    from winnow.catalog.query import CatalogError
    from winnow.catalog.query import query as run_query

    root, sql = _split(args, "SQL")
    with one_line_errors():
        if format not in ("table", "csv", "json", "parquet"):
            raise CatalogError(f"unknown --format {format!r} (use table, csv, json or parquet)")
        if format == "parquet" and out is None:
            raise CatalogError("--format parquet needs --out FILE")
        result = run_query(root, sql)
    if format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(result, out)
        err_console.print(f"{result.num_rows} rows -> {out}")
        return
    df = result.to_pandas()
    if format == "table":
        _print_frame(df)
        return
    text = df.to_csv(index=False) if format == "csv" else df.to_json(orient="records", date_format="iso")
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        out.write_text(text, encoding="utf-8")
        err_console.print(f"{len(df)} rows -> {out}")


@catalog_app.command("compact")
def compact(
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = DEFAULT_CATALOG,
    run: Annotated[str | None, typer.Option(help="only this run")] = None,
) -> None:
    """Merge each finished run's parts into a few large files sorted by prompt
    (runs/<run_id>/compacted-*.parquet), swapped in atomically; unfinished runs are skipped.
    Runs compact themselves when they finish (run.compact); this migrates older catalogs."""
    import time

    from rich.progress import Progress

    from winnow.catalog.compact import compact_catalog

    began = time.perf_counter()
    done = []
    with one_line_errors(), Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("compacting", total=None)
        for result in compact_catalog(catalog, run):
            bar.advance(task)
            if result.skipped:
                err_console.print(f"run {result.run_id}: skipped ({result.skipped})", highlight=False)
            else:
                done.append(result)
    err_console.print(
        f"compacted {len(done)} runs: {sum(r.parts for r in done)} parts -> "
        f"{sum(r.files for r in done)} files, {sum(r.rows for r in done)} rows "
        f"in {time.perf_counter() - began:.1f} s"
    )


def regenerate_command(
    args: Annotated[list[str], typer.Argument(metavar="[CATALOG] CANDIDATE_ID")],
    run: Annotated[str | None, typer.Option(help="run id (when several runs hold the candidate)")] = None,
    out: Annotated[Path | None, typer.Option(help="also save the regenerated PNG here")] = None,
) -> None:
    """Regenerate a catalog row from what it records and check it against its image hash.

    The generator is rebuilt with every setting of the row's run, from the run's manifest
    (runs/<run_id>/_manifest.json); a run written before manifests existed is rebuilt from its
    rows. Exit status 0 on a match, 1 on a mismatch.
    """
    from winnow.catalog.writer import encode_png
    from winnow.pipeline.regenerate import check_row

    root, candidate = _split(args, "CANDIDATE_ID")
    with one_line_errors():
        check = check_row(root, candidate, run)
    if out is not None:
        out.write_bytes(encode_png(check.pixels))
    if check.match is None:
        print(f"regenerated {candidate} (run {check.run_id}): sha256 {check.regenerated}; no image was saved")
    elif check.match:
        print(f"match: {candidate} (run {check.run_id}) regenerates to sha256 {check.regenerated}")
    else:
        print(f"mismatch: {candidate} (run {check.run_id}): stored {check.stored}, ", end="")
        print(f"regenerated {check.regenerated}")
        raise typer.Exit(1)


def export_command(
    format: Annotated[str, typer.Option("--format", help="imagefolder, webdataset, parquet, kohya or pairs")],
    out: Annotated[Path, typer.Option(help="export folder (created; must be absent or empty)")],
    where: Annotated[str | None, typer.Option(help="SQL condition over the view `catalog`")] = None,
    kept_only: Annotated[bool, typer.Option("--kept-only", help="only kept candidates")] = False,
    run: Annotated[str | None, typer.Option(help="only this run")] = None,
    split: Annotated[
        str | None,
        typer.Option(help="NAME=FRACTION[,...] by prompt, e.g. validation=0.05; train gets the rest"),
    ] = None,
    split_seed: Annotated[int, typer.Option(help="seed of the prompt hash that assigns splits")] = 0,
    shard_size: Annotated[int, typer.Option(help="webdataset: samples per tar")] = 1000,
    shard_mb: Annotated[float, typer.Option(help="parquet, pairs: MB of images per shard")] = 500,
    repeats: Annotated[int, typer.Option(help="kohya: repeats, the folder is <repeats>_<name>")] = 1,
    name: Annotated[str, typer.Option(help="kohya: concept name of the folder")] = "winnow",
    caption_extension: Annotated[
        str, typer.Option(help="kohya: captions' extension, .txt or .caption")
    ] = ".txt",
    buckets: Annotated[
        str | None, typer.Option(help="WxH[,...]: record each image's nearest-aspect bucket (SDXL sizes)")
    ] = None,
    dedup: Annotated[
        bool | None,
        typer.Option("--dedup/--no-dedup", help="leave out winnow dedup's duplicates (default: when it ran)"),
    ] = None,
    pairs_per_prompt: Annotated[
        int, typer.Option(help="pairs: the most preferred/rejected pairs per prompt")
    ] = 16,
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = DEFAULT_CATALOG,
) -> None:
    """Export rows that have an image file as a training set: images, captions, the full row as
    metadata, train/validation splits by prompt, and a dataset card (README.md)."""
    from winnow.catalog.export import export

    with one_line_errors():
        result = export(
            catalog,
            format,
            out,
            where,
            kept_only,
            run,
            split=split,
            split_seed=split_seed,
            shard_size=shard_size,
            shard_mb=shard_mb,
            repeats=repeats,
            name=name,
            caption_extension=caption_extension,
            buckets=buckets,
            dedup=dedup,
            pairs_per_prompt=pairs_per_prompt,
        )
    for row_id, why in result.skipped:
        err_console.print(f"skipped {row_id}: {why}", highlight=False)
    splits = ", ".join(f"{s} {n}" for s, n in result.splits.items())
    err_console.print(
        f"exported {result.samples} samples ({splits or 'none'}) as {format} to [bold]{out}[/] "
        f"({len(result.files)} files, {result.bytes / 1e6:.2f} MB; {len(result.skipped)} skipped)"
    )


def report_command(
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = DEFAULT_CATALOG,
    run: Annotated[str | None, typer.Option(help="only this run")] = None,
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("report.html"),
    max_prompts: Annotated[
        int, typer.Option(help="prompts shown with thumbnails; past it, a sample (the page says so)")
    ] = 200,
) -> None:
    """One self-contained HTML page: run summary, score histograms, every candidate by prompt."""
    from winnow.catalog.report import write_report

    with one_line_errors():
        path = write_report(catalog, out, run, max_prompts)
    err_console.print(f"report: [bold]{path}[/]")


def score_command(
    folder: Annotated[Path, typer.Argument(help="folder of images (searched recursively)")],
    config: Annotated[Path, typer.Option(help="run config: its scorers, select and run sections")],
    prompts_from: Annotated[str, typer.Option(help="sidecar, csv:FILE (columns file,prompt) or filename")] = (
        "sidecar"
    ),
    out: Annotated[Path | None, typer.Option(help="catalog folder (overrides run.out)")] = None,
    run_id: Annotated[str | None, typer.Option(help="run id (default: hash of images and settings)")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... (default auto)")] = "auto",
) -> None:
    """Score existing images with the config's scorers and policy; catalog them as external."""
    from winnow.pipeline.score import score_folder
    from winnow.pipeline.score_config import load_score_config

    with one_line_errors():
        cfg = load_score_config(config)
        result = score_folder(folder, prompts_from, cfg, out, run_id=run_id, device=device)
    for rel, why in result.skipped:
        err_console.print(f"skipped {rel}: {why}", highlight=False)
    for warning in result.warnings:
        err_console.print(f"warning: {warning}", highlight=False)
    err_console.print(
        f"scored {result.images} images ({result.kept} kept, {len(result.skipped)} files skipped, "
        f"{result.skipped_shards}/{result.shards} shards already done) into [bold]{result.catalog}[/] "
        f"(run {result.run_id}, source=external)"
    )


def rescore_command(
    config: Annotated[Path, typer.Option(help="config whose scorers section holds the scorer's settings")],
    scorer: Annotated[str, typer.Option(help="head scorer to add (aesthetic, nsfw, ...)")],
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = DEFAULT_CATALOG,
    run: Annotated[list[str] | None, typer.Option(help="only this run (repeatable)")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
) -> None:
    """Add a head scorer to existing rows from their stored embeddings (no images, no
    regeneration), as a side table the catalog view joins: score_<scorer> is no longer null for
    runs made before it was configured."""
    from winnow.pipeline.rescore import RescoreError, rescore
    from winnow.pipeline.score_config import load_score_config

    with one_line_errors():
        cfg = load_score_config(config)
        if scorer not in cfg.scorers:
            raise RescoreError(f"scorer {scorer!r} is not configured in {config}")
        results = rescore(catalog, scorer, cfg.scorers[scorer], device, run)
    for r in results:
        if r.skipped:
            err_console.print(f"run {r.run_id}: skipped ({r.skipped})", highlight=False)
    done = [r for r in results if not r.skipped]
    err_console.print(
        f"rescored {sum(r.rows for r in done)} rows of {len(done)} runs with {scorer} "
        f"({len(results) - len(done)} runs skipped)"
    )


def dedup_command(
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = DEFAULT_CATALOG,
    cosine: Annotated[float, typer.Option(help="cosine at or above which two rows are duplicates")] = 0.95,
    where: Annotated[str | None, typer.Option(help="SQL condition: only these kept rows")] = None,
    by: Annotated[str, typer.Option(help="column whose highest value each group keeps")] = "combined_score",
) -> None:
    """Group near-duplicate kept rows over all runs from their stored embeddings, keep each
    group's best, and record the decision in a side table (dedup/decisions.parquet; the parts
    are not rewritten). Stats, report and export honour it."""
    from winnow.catalog.dedup import dedup_catalog

    with one_line_errors():
        result = dedup_catalog(catalog, cosine, where, by)
    d = result.decisions
    missing = f"; {result.missing} kept rows have no stored embedding" if result.missing else ""
    err_console.print(
        f"dedup ({d.method}, cosine >= {cosine}): {result.rows} kept rows, {d.groups} groups of "
        f"near-duplicates, {d.duplicates} rows marked duplicate{missing} -> [bold]{result.path}[/]"
    )


def register(app: typer.Typer) -> None:
    """Add these commands to the ``winnow`` app."""
    app.add_typer(catalog_app, name="catalog")
    app.command("regenerate")(regenerate_command)
    app.command("export")(export_command)
    app.command("report")(report_command)
    app.command("score")(score_command)
    app.command("rescore")(rescore_command)
    app.command("dedup")(dedup_command)
    app.command("review")(review_command)
    app.command("calibrate")(calibrate_command)
    app.command("train-head")(train_head_command)
