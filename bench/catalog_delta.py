"""The same synthetic catalog as a Delta Lake table (delta-rs, ``deltalake``; the ``bench`` extra),
timed with the same queries, for the layout decision of the catalog-at-scale bench.

    python -m bench.catalog_delta --catalog /work/bench-data/synth-1m \\
        --table /work/bench-data/delta-1m --scale 1m [--parquet /work/bench-data/synth-1m-after]

Steps, each a subprocess measured as ``bench/catalog_scale.py`` measures winnow's commands
(wall and CPU seconds, peak resident set, load average):

1. ``write``: the catalog's runs appended one commit per run (as nightly runs would land),
   zstd like winnow's parts;
2. ``optimize``: ``optimize.compact()``, then ``optimize.z_order(["prompt_id"])``, then
   ``vacuum`` of the replaced files (retention 0: nothing else reads the table);
3. the queries below, in DuckDB over ``DeltaTable(...).to_pyarrow_dataset()`` (offline: DuckDB's
   own delta extension is a download), after ``write`` and after ``optimize``; with
   ``--parquet``, the same SQL over ``read_parquet('<catalog>/runs/*/*.parquet')`` of that
   catalog (winnow's layout, without winnow's view and side tables) as the engine's baseline.

Results are merged into ``bench/results/catalog-delta.json`` under the scale's key;
``python -m bench.catalog_delta markdown 10m`` prints the queries as a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.catalog_scale import HISTOGRAM, RESULTS, RUN, TOP2, measure, probe

QUERIES = {
    "stats": (
        "select run_id, count(*) as candidates, count(distinct prompt_id) as prompts, "
        "count(*) filter (where kept) as kept, count(image_path) as images, min(created_at) as first, "
        "max(created_at) as last, avg(score_aesthetic) as aesthetic_mean, "
        "quantile_cont(score_aesthetic, [0.1, 0.5, 0.9]) as aesthetic_q, avg(score_clip_score) as clip_mean, "
        "quantile_cont(score_clip_score, [0.1, 0.5, 0.9]) as clip_q from catalog "
        "group by run_id order by run_id"
    ),
    "count_kept": "select count(*) from catalog where kept",
    "top2_per_prompt": TOP2,
    "histogram_one_run": HISTOGRAM,
    # regenerate's lookup: the rows of the candidate's shard (its whole pipeline call).
    "regenerate_lookup": (
        f"select * from catalog where run_id = '{RUN}' and shard_id = "
        f"(select shard_id from catalog where run_id = '{RUN}' and candidate_id = '{{probe}}')"
    ),
    "prompt_ids": "select distinct prompt_id from catalog",
}


def write(catalog: Path, table: Path) -> dict:
    """Append each run of ``catalog`` to the Delta table at ``table`` (one commit per run)."""
    import pyarrow.dataset as ds
    from deltalake import WriterProperties, write_deltalake

    zstd = WriterProperties(compression="ZSTD")
    read_s = write_s = 0.0
    for run in sorted(p for p in (catalog / "runs").iterdir() if p.is_dir()):
        start = time.perf_counter()
        rows = ds.dataset(run, format="parquet").to_table()  # skips _manifest.json and dot-files
        read_s += time.perf_counter() - start
        start = time.perf_counter()
        write_deltalake(table, rows, mode="append", writer_properties=zstd)
        write_s += time.perf_counter() - start
    return {"read_parts_seconds": round(read_s, 2), "write_seconds": round(write_s, 2)} | files(table)


def optimize(table: Path) -> dict:
    """Compact, z-order by prompt_id and vacuum the table; seconds of each step."""
    from deltalake import DeltaTable, WriterProperties

    zstd = WriterProperties(compression="ZSTD")
    steps = {
        "compact": lambda dt: dt.optimize.compact(writer_properties=zstd),
        "z_order": lambda dt: dt.optimize.z_order(["prompt_id"], writer_properties=zstd),
        "vacuum": lambda dt: dt.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False),
    }
    found = {}
    for step, call in steps.items():
        start = time.perf_counter()
        metrics = call(DeltaTable(table))
        found[f"{step}_seconds"] = round(time.perf_counter() - start, 2)
        if isinstance(metrics, dict):
            found[f"{step}_metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    return found | files(table)


def files(table: Path) -> dict:
    """The table's live data files (in its log), the Parquet files on disk, bytes, commits."""
    from deltalake import DeltaTable

    dt = DeltaTable(table)
    on_disk = list(table.glob("*.parquet"))
    return {
        "live_files": len(dt.file_uris()),
        "files_on_disk": len(on_disk),
        "bytes_on_disk": sum(p.stat().st_size for p in on_disk),
        "version": dt.version(),
    }


def query(source: str, name: str, candidate: str) -> int:
    """Run query ``name`` over ``delta:<table>`` or ``parquet:<catalog>``; the result's rows."""
    import duckdb

    kind, path = source.split(":", 1)
    con = duckdb.connect()
    if kind == "delta":
        from deltalake import DeltaTable

        dataset = DeltaTable(path).to_pyarrow_dataset()
        con.register("catalog", dataset)
    else:
        glob = str(Path(path) / "runs" / "*" / "*.parquet")
        con.execute(f"create view catalog as select * from read_parquet('{glob}', union_by_name = true)")
    return con.sql(QUERIES[name].format(probe=candidate)).to_arrow_table().num_rows


def timed(argv: list[str], repeats: int = 3, quick_s: float = 30.0) -> dict:
    """``measure`` ``argv``; ``repeats`` times in all when it is quicker than ``quick_s``."""
    runs = [measure(argv, Path.cwd(), 12 * 2**30, 600.0)]
    if runs[0]["rc"] == 0 and runs[0]["seconds"] < quick_s:
        runs += [measure(argv, Path.cwd(), 12 * 2**30, 600.0) for _ in range(repeats - 1)]
    return {
        "seconds": round(statistics.median(r["seconds"] for r in runs), 2),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "runs": runs,
    }


def bench(catalog: Path, table: Path, scale: str, parquet: Path | None) -> None:
    """Write, optimize and query; merge into ``bench/results/catalog-delta.json``."""
    out = RESULTS / "catalog-delta.json"
    results = json.loads(out.read_text()) if out.exists() else {"scales": {}}
    entry = results["scales"].setdefault(scale, {})
    entry |= {"catalog": str(catalog), "table": str(table)}
    me = [sys.executable, "-m", "bench.catalog_delta"]
    report = table.with_name(f".{table.name}-step.json")
    candidate = probe(catalog)

    def save() -> None:
        out.write_text(json.dumps(results, indent=2) + "\n")

    def step(key: str, argv: list[str], repeat: bool = False) -> None:
        entry[key] = timed(argv) if repeat else timed(argv, repeats=1)
        if entry[key]["runs"][0]["rc"] != 0:
            raise SystemExit(f"{key} failed: {' '.join(argv)}")
        if report.exists():  # what the step itself measured inside (write vs read, each step)
            entry[key]["inside"] = json.loads(report.read_text())
            report.unlink()
        save()
        print(f"{scale} delta {key}: {entry[key]['seconds']} s, {entry[key]['peak_mb']} MB", flush=True)

    def queries(stage: str, source: str) -> None:
        for name in QUERIES:
            step(f"{stage}/{name}", [*me, "query", source, name, candidate], repeat=True)

    if table.exists():
        shutil.rmtree(table)
    step("write", [*me, "write", str(catalog), str(table), "--report", str(report)])
    queries("appended", f"delta:{table}")
    step("optimize", [*me, "optimize", str(table), "--report", str(report)])
    queries("optimized", f"delta:{table}")
    if parquet is not None:
        queries("parquet", f"parquet:{parquet}")
    save()


def markdown(scale: str) -> str:
    """The queries at ``scale`` as a Markdown table: wall s (CPU s) / peak MB per layout."""
    entry = json.loads((RESULTS / "catalog-delta.json").read_text())["scales"][scale]
    stages = [s for s in ("appended", "optimized", "parquet") if f"{s}/count_kept" in entry]
    lines = ["| query | " + " | ".join(stages) + " |", "| --- |" + " --- |" * len(stages)]
    for name in QUERIES:
        cells = []
        for stage in stages:
            found = entry[f"{stage}/{name}"]
            cpu = statistics.median(r["cpu_seconds"] for r in found["runs"])
            cells.append(f"{found['seconds']:.2f} s ({cpu:.2f}) / {found['peak_mb']:,.0f} MB")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["markdown"]:  # python -m bench.catalog_delta markdown 10m
        print(markdown(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step")
    w = sub.add_parser("write")
    w.add_argument("catalog", type=Path)
    w.add_argument("table", type=Path)
    o = sub.add_parser("optimize")
    o.add_argument("table", type=Path)
    for s in (w, o):
        s.add_argument("--report", type=Path, required=True, help="JSON file for the step's own timings")
    q = sub.add_parser("query")
    q.add_argument("source", help="delta:<table> or parquet:<catalog>")
    q.add_argument("name", choices=list(QUERIES))
    q.add_argument("candidate")
    parser.add_argument("--catalog", type=Path)
    parser.add_argument("--table", type=Path)
    parser.add_argument("--scale")
    parser.add_argument("--parquet", type=Path, help="also query this winnow catalog with the same SQL")
    args = parser.parse_args()
    if args.step == "write":
        args.report.write_text(json.dumps(write(args.catalog, args.table)))
    elif args.step == "optimize":
        args.report.write_text(json.dumps(optimize(args.table)))
    elif args.step == "query":
        print(query(args.source, args.name, args.candidate))
    else:
        if not (args.catalog and args.table and args.scale):
            parser.error("--catalog, --table and --scale are needed")
        bench(args.catalog, args.table, args.scale, args.parquet)


if __name__ == "__main__":
    main()
