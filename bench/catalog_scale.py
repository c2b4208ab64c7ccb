"""Time winnow's catalog commands on a large catalog: wall seconds and peak memory per command.

    python -m bench.catalog_scale --catalog /work/bench-data/synth-10m --scale 10m \\
        --label before --repo /work/before

Each command runs as a subprocess of ``<repo>/.venv/bin/python`` (``-m winnow ...`` or ``-c``)
with the repository as its working folder, so a checkout is measured with its own code. For
each run it records wall seconds, CPU seconds and the child's peak resident set (``os.wait4``'s
``ru_maxrss``), and the load average before and after (the machine is shared). A watchdog kills
a command whose resident set passes ``--mem-cap-gb`` or whose time passes ``--time-cap-s`` and
records it as killed. A command that finishes in under ``--repeat-below-s`` is run
``--repeats`` times; its seconds are the median, its peak memory the largest.

Commands: ``catalog stats``; ``catalog query`` for the count of kept rows, the top 2 per prompt
(a window function, aggregated so that printing does not dominate) and a score histogram of one
run; the row lookup of ``winnow regenerate`` (its ``check_row`` with the model step replaced by
an exit: the issue's "before loading the model"); ``report`` of the whole catalog and of one
run; a pool's "which prompts are already in the catalog" (``winnow.catalog.query.prompt_ids``);
with ``--compact``, ``catalog compact`` first (on the catalog given, so give it a hard-linked
copy: ``cp -al``); with ``--full-regenerate``, ``winnow regenerate`` end to end once.

Results are merged into ``bench/results/catalog-<label>.json`` under the scale's key.
``python -m bench.catalog_scale markdown before,after 1m,10m`` prints them as a table, and
``python -m bench.catalog_scale scaling after`` fits their growth with rows (``scaling``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

RESULTS = Path(__file__).resolve().parent / "results"
RUN = "night-013"  # the run that the one-run commands read (any of the 20)
_PAGE = os.sysconf("SC_PAGE_SIZE")

TOP2 = (
    "select count(*) as rows, avg(score_aesthetic) as aesthetic from (select score_aesthetic, "
    "row_number() over (partition by run_id, prompt_id order by combined_score desc) as r from catalog) "
    "where r <= 2"
)
HISTOGRAM = (
    f"select floor(score_aesthetic * 2) / 2 as bin, count(*) as n from catalog where run_id = '{RUN}' "
    "group by 1 order by 1"
)
# check_row's lookup only: the model step (``regenerate``) exits as soon as the rows are found.
LOOKUP = (
    "import sys, time; import winnow.pipeline.regenerate as r\n"
    "def found(rows, candidate_id, manifest=None):\n"
    "    print(f'found {candidate_id} in {len(rows)} shard rows'); sys.exit(0)\n"
    "r.regenerate = found\n"
    "r.check_row(sys.argv[1], sys.argv[2])\n"
    "sys.exit('the lookup did not reach the model step')"
)
PROMPT_IDS = "import sys, winnow.catalog.query as q; print(len(q.prompt_ids(sys.argv[1])))"


def probe(catalog: Path) -> str:
    """A candidate id of run ``RUN`` that was not kept (no image: regenerate only recomputes it),
    chosen once per catalog and remembered in its ``synth.json`` so that every layout of it
    (plain, compacted) is asked for the same row."""
    info_path = catalog / "synth.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if "probe" not in info:
        parts = sorted(
            p for p in (catalog / "runs" / RUN).glob("*.parquet") if not p.name.startswith((".", "_"))
        )
        table = pq.read_table(parts[len(parts) // 2], columns=["candidate_id", "kept"])
        info["probe"] = table.filter(pc.invert(table["kept"]))["candidate_id"][5].as_py()
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    return info["probe"]


def commands(catalog: Path, candidate: str, compact: bool, full_regenerate: bool) -> dict[str, list[str]]:
    """Name -> argv after the interpreter."""
    c = str(catalog)
    found = {"compact": ["-m", "winnow", "catalog", "compact", c]} if compact else {}
    found |= {
        "stats": ["-m", "winnow", "catalog", "stats", c],
        "count_kept": ["-m", "winnow", "catalog", "query", c, "select count(*) from catalog where kept"],
        "top2_per_prompt": ["-m", "winnow", "catalog", "query", c, TOP2],
        "histogram_one_run": ["-m", "winnow", "catalog", "query", c, HISTOGRAM],
        "regenerate_lookup": ["-c", LOOKUP, c, candidate],
        "prompt_ids": ["-c", PROMPT_IDS, c],
        "report_one_run": ["-m", "winnow", "report", c, "--run", RUN, "--out", "/tmp/catalog-scale-run.html"],
        "report_all": ["-m", "winnow", "report", c, "--out", "/tmp/catalog-scale-all.html"],
    }
    if full_regenerate:
        found["regenerate_full"] = ["-m", "winnow", "regenerate", c, candidate]
    return found


def _rss(pid: int) -> int:
    """Resident set of ``pid`` now, in bytes (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError):
        return 0


def measure(argv: list[str], cwd: Path, mem_cap: int, time_cap: float) -> dict:
    """Run ``argv`` once; wall and CPU seconds, peak MB (``ru_maxrss``), exit status, load."""
    load = os.getloadavg()
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed: list[str] = []
    done = threading.Event()

    def watch() -> None:  # poll the resident set and the clock; kill past either cap
        while not done.wait(0.1):
            elapsed = time.perf_counter() - start
            if _rss(child.pid) > mem_cap:
                killed.append(f"memory > {mem_cap / 2**30:.0f} GB at {elapsed:.0f} s")
            elif elapsed > time_cap:
                killed.append(f"time > {time_cap:.0f} s")
            if killed:
                child.send_signal(signal.SIGKILL)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr = threading.Thread(target=lambda: setattr(child, "err_text", child.stderr.read()), daemon=True)
    stderr.start()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    stderr.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: ru_maxrss is in KiB
        "rc": child.returncode,
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    if killed:
        result["killed"] = killed[0]
    elif child.returncode != 0:
        result["error"] = child.err_text.decode(errors="replace").strip().splitlines()[-1:]
    return result


def run_command(argv: list[str], cwd: Path, args: argparse.Namespace) -> dict:
    """``measure`` once, and ``args.repeats`` times in all if it was quick and succeeded."""
    runs = [measure(argv, cwd, int(args.mem_cap_gb * 2**30), args.time_cap_s)]
    first = runs[0]
    once = argv[1:5] == ["-m", "winnow", "catalog", "compact"]  # a second compaction finds nothing to do
    if first["rc"] == 0 and first["seconds"] < args.repeat_below_s and not once:
        runs += [
            measure(argv, cwd, int(args.mem_cap_gb * 2**30), args.time_cap_s) for _ in range(args.repeats - 1)
        ]
    summary = {
        "seconds": round(statistics.median(r["seconds"] for r in runs), 2),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "runs": runs,
    }
    for key in ("killed", "error"):
        if key in first:
            summary[key] = first[key]
    return summary


def versions(python: Path, repo: Path) -> dict:
    """The measured interpreter's library versions and the checkout's commit."""
    code = (
        "import json, sys, duckdb, pyarrow, pandas; print(json.dumps({'python': sys.version.split()[0], "
        "'duckdb': duckdb.__version__, 'pyarrow': pyarrow.__version__, 'pandas': pandas.__version__}))"
    )
    found = json.loads(
        subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    commit = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return found | {"winnow_commit": commit.stdout.strip()}


def layout(catalog: Path) -> dict:
    """How the catalog is stored: rows (from synth.json), data files, bytes."""
    files = [p for p in (catalog / "runs").glob("*/*.parquet") if not p.name.startswith((".", "_"))]
    info = json.loads((catalog / "synth.json").read_text()) if (catalog / "synth.json").exists() else {}
    return {"rows": info.get("rows"), "files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def _cell(found: dict | None) -> str:
    """``wall s (CPU s) / peak MB`` of one command's summary (medians; killed and failed ones
    say so)."""
    if found is None:
        return "—"
    if "killed" in found:
        return f"killed: {found['killed']} (peak {found['peak_mb'] / 1024:.1f} GB)"
    if "error" in found:
        return "failed"
    cpu = statistics.median(r["cpu_seconds"] for r in found["runs"])
    return f"{found['seconds']:.1f} s ({cpu:.1f} CPU s) / {found['peak_mb']:,.0f} MB"


def markdown(labels: list[str], scales: list[str]) -> str:
    """The results of ``labels`` at ``scales`` as a Markdown table: one row per command, one
    column per label and scale (median wall and CPU seconds / peak resident MB)."""
    results = {label: json.loads((RESULTS / f"catalog-{label}.json").read_text()) for label in labels}
    columns = [(label, scale) for scale in scales for label in labels]
    names = list(dict.fromkeys(
        name for r in results.values() for s in scales for name in r["scales"].get(s, {}).get("commands", {})
    ))  # fmt: skip
    lines = [
        "| command | " + " | ".join(f"{label} {scale}" for label, scale in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name in names:
        cells = [
            _cell(results[label]["scales"].get(scale, {}).get("commands", {}).get(name))
            for label, scale in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling(label: str, target: float = 1e8) -> str:
    """Per command of ``label``: median wall and CPU seconds and peak MB at each measured scale,
    a line ``seconds = start-up + rows x cost per row`` fitted (least squares) to the CPU
    seconds, and what that line and the peak memory's growth per row between the two largest
    scales give at ``target`` rows. A cost per row that comes out at or below zero (no growth
    measurable under the load's noise) is shown as flat and extrapolates to the start-up."""
    import numpy as np

    results = json.loads((RESULTS / f"catalog-{label}.json").read_text())["scales"]
    scales = sorted(results, key=lambda s: results[s]["layout_start"]["rows"])
    rows = np.array([results[s]["layout_start"]["rows"] for s in scales], dtype=float)
    lines = [
        f"| command | {' | '.join(scales)} | CPU s per 1M rows | {target / 1e6:.0f}M estimate (CPU s / MB) |",
        "| --- |" + " --- |" * (len(scales) + 2),
    ]
    for name in results[scales[-1]]["commands"]:
        found = [results[s]["commands"].get(name) for s in scales]
        if any(f is None or "killed" in f or "error" in f for f in found):
            continue
        cpu = np.array([statistics.median(r["cpu_seconds"] for r in f["runs"]) for f in found])
        peak = np.array([f["peak_mb"] for f in found])
        per_row, start = np.polyfit(rows, cpu, 1)
        per_row = max(per_row, 0.0)
        start = start if per_row > 0 else cpu.mean()
        memory = peak[-1] + max((peak[-1] - peak[-2]) / (rows[-1] - rows[-2]), 0.0) * (target - rows[-1])
        cells = [
            f"{f['seconds']:.1f} s ({c:.1f} CPU s) / {m:,.0f} MB"
            for f, c, m in zip(found, cpu, peak, strict=True)
        ]
        growth = f"{per_row * 1e6:.2f}" if per_row > 0 else "flat"
        lines.append(
            f"| {name} | {' | '.join(cells)} | {growth} | {start + per_row * target:.0f} / {memory:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["markdown"]:  # python -m bench.catalog_scale markdown before,after 1m,10m
        print(markdown(sys.argv[2].split(","), sys.argv[3].split(",")))
        return
    if sys.argv[1:2] == ["scaling"]:  # python -m bench.catalog_scale scaling after
        print(scaling(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--scale", required=True, help="key of this catalog in the results, e.g. 10m")
    parser.add_argument("--label", required=True, help="results go to bench/results/catalog-<label>.json")
    parser.add_argument(
        "--repo", type=Path, required=True, help="checkout whose .venv/bin/python runs winnow"
    )
    parser.add_argument("--only", nargs="*", help="run only these commands (names as in the results)")
    parser.add_argument("--compact", action="store_true", help="run and time `catalog compact` first")
    parser.add_argument("--full-regenerate", action="store_true", help="also time `winnow regenerate` whole")
    parser.add_argument("--mem-cap-gb", type=float, default=12.0)
    parser.add_argument("--time-cap-s", type=float, default=300.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeat-below-s", type=float, default=30.0)
    args = parser.parse_args()
    repo, catalog = args.repo.resolve(), args.catalog.resolve()
    python = repo / ".venv" / "bin" / "python"
    out = RESULTS / f"catalog-{args.label}.json"
    results = json.loads(out.read_text()) if out.exists() else {"label": args.label, "scales": {}}
    results["versions"] = versions(python, repo)
    results["repo"] = str(repo)
    entry = results["scales"].setdefault(args.scale, {"commands": {}})
    entry |= {"catalog": str(catalog), "layout_start": layout(catalog), "cpus": os.cpu_count()}
    for name, argv in commands(catalog, probe(catalog), args.compact, args.full_regenerate).items():
        if args.only and name not in args.only:
            continue
        entry["commands"][name] = {"command": ["python", *argv]} | run_command(
            [str(python), *argv], repo, args
        )
        entry["layout_end"] = layout(catalog)
        entry["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        shown = entry["commands"][name]
        note = shown.get("killed") or shown.get("error") or ""
        print(
            f"{args.scale} {args.label} {name}: {shown['seconds']} s, {shown['peak_mb']} MB {note}",
            flush=True,
        )
        out.write_text(json.dumps(results, indent=2) + "\n")  # after each command: a kill loses nothing


if __name__ == "__main__":
    sys.exit(main())
