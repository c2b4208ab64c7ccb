"""Compaction of finished runs: a run's many small parts become a few large sorted files.

A run writes one part per shard (``runs/<run>/shard-<id>.parquet``, a few dozen rows at the
default shard size), so a large catalog is mostly file overhead for every reader. Once every
planned shard of a run is written (the run manifest says how many prompts and the shard
size), ``compact_run`` rewrites the run as::

    runs/<run>/compacted-00000.parquet, compacted-00001.parquet, ...   (<= FILE_ROWS rows each)
    runs/<run>/_compacted.json    {"shards": [...], "rows": N, "files": [...], "compacted_at": ...}
    runs/<run>/_manifest.json, runs/<run>/_embeddings/...              (the same files, hard-linked)

Rows keep the parts' columns and types (the union of the parts' columns, as readers unify
them), sorted by (prompt_id, candidate_index), in zstd row groups of ``ROW_GROUP_ROWS`` rows.
DuckDB sorts within ``MEMORY_LIMIT`` (spilling to disk); pyarrow writes the Arrow types of the
parts, so a compacted run reads back the very rows its parts held.

Readers glob ``runs/*/*.parquet``, so the swap must never show them both folders' rows or
neither's: the new folder is built beside the catalog in ``<catalog>/.compact/`` and exchanged
with ``runs/<run>`` in one ``renameat2(RENAME_EXCHANGE)`` (Linux), then the old folder, now in
``.compact/``, is deleted. A kill at any point leaves either the old or the new folder in
``runs/``; the next compaction removes what a dead process left in ``.compact/``. A reader
that listed the old folder's files just before the swap can still find one gone when it
opens it (an IO error; querying again reads the new files).

Resume (``winnow.pipeline.shard``) treats a shard listed in ``_compacted.json`` as done.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from winnow.catalog.cleanup import alive
from winnow.catalog.manifest import find_manifest, manifest_path
from winnow.models.errors import WinnowError, first_line

STATE = "_compacted.json"
WORK = ".compact"  # <catalog>/.compact/: new folders being built, old ones being deleted
ROW_GROUP_ROWS = 122_880  # DuckDB's row group size: readers skip whole groups by statistics
FILE_ROWS = 8 * ROW_GROUP_ROWS  # at most ~1M rows per compacted file
MEMORY_LIMIT = "512MB"  # DuckDB's table and sort spill to disk past this
FILES_PER_LOAD = 256  # parts read by one DuckDB scan
_PART = re.compile(r"^shard-(.+)\.parquet$")
_WORK_NAME = re.compile(r"^.+\.(\d+)\.\d+(?:\.spill)?$")  # <run>.<pid>.<thread id>[.spill]
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
# A hook for the kill-safety test: seconds to sleep between building the new folder and the swap.
_PAUSE_ENV = "WINNOW_COMPACT_PAUSE_BEFORE_SWAP"


class CompactError(WinnowError):
    """A run that cannot be compacted (not finished, unreadable, or no atomic swap here)."""


@dataclass(frozen=True)
class Compaction:
    """What ``compact_run`` did with one run: ``skipped`` says why it did nothing (else None);
    ``parts``: data files read, ``files``: compacted files written, ``seconds``: wall time."""

    run_id: str
    skipped: str | None = None
    parts: int = 0
    files: int = 0
    rows: int = 0
    seconds: float = 0.0


def planned_shards(prompts: int, shard_size: int) -> list[str]:
    """The shard ids of a run of ``prompts`` prompts in shards of ``shard_size`` (as
    ``winnow.pipeline.shard.plan_shards`` numbers them)."""
    return [f"{i:05d}" for i in range(math.ceil(prompts / shard_size))]


def read_state(run_dir: Path) -> dict | None:
    """The run's ``_compacted.json``, or None if it was never compacted."""
    try:
        return json.loads((run_dir / STATE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise CompactError(f"cannot read {run_dir / STATE}: {err}") from None


def compacted_counts(run_dir: Path) -> dict[str, tuple[int, int]]:
    """shard id -> (rows, kept) of each shard in the run's compacted files (empty if the run
    is not compacted). Read once per compaction, for a resume's many shards."""
    try:
        found = (run_dir / STATE).stat()
    except FileNotFoundError:
        return {}
    return _counts(str(run_dir), (found.st_ino, found.st_mtime_ns))


@lru_cache(maxsize=16)
def _counts(run_dir: str, version: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """``compacted_counts`` of one state file (``version``: its inode and mtime)."""
    state = read_state(Path(run_dir)) or {"shards": [], "files": []}
    files = [str(Path(run_dir) / name) for name in state["files"]]
    counts = {}
    if files:
        rows = pq.ParquetDataset(files).read(columns=["shard_id", "kept"])
        rows = rows.set_column(1, "kept", pc.cast(pc.fill_null(rows["kept"], False), pa.int64()))
        groups = rows.group_by("shard_id").aggregate([("kept", "count"), ("kept", "sum")]).to_pylist()
        counts = {g["shard_id"]: (g["kept_count"], g["kept_sum"]) for g in groups}
    return {shard: counts.get(shard, (0, 0)) for shard in state["shards"]}


def is_compacted(part: Path) -> bool:
    """Whether the shard of ``part`` (``runs/<run>/shard-<id>.parquet``) is in its run's
    compacted files."""
    state = read_state(part.parent)
    return state is not None and _shard_of(part) in state["shards"]


def _data_files(run_dir: Path) -> list[Path]:
    """The files readers read in ``run_dir`` (``*.parquet`` not starting with ``.`` or ``_``)."""
    return sorted(p for p in run_dir.glob("*.parquet") if not p.name.startswith((".", "_")))


def _shard_of(path: Path) -> str | None:
    match = _PART.match(path.name)
    return match[1] if match else None


def why_not(root: Path, run_id: str) -> str | None:
    """Why run ``run_id`` is not compacted now (not finished, already compacted, ...), or None."""
    run_dir = root / "runs" / run_id
    if not run_dir.is_dir():
        return "no such run"
    manifest = find_manifest(root, run_id)
    if manifest is None:
        return "no run manifest (written before manifests existed): cannot tell whether it finished"
    shard_size = manifest.config.get("run", {}).get("shard_size")
    if not isinstance(shard_size, int) or shard_size < 1:
        return "its manifest records no shard size"
    state = read_state(run_dir)
    done = set(state["shards"]) if state else set()
    parts = {_shard_of(p) for p in _data_files(run_dir)} - {None}
    if state and not parts:
        return "already compacted"
    planned = planned_shards(manifest.prompts.prompts, shard_size)
    if not planned:
        return "no prompts"
    missing = set(planned) - done - parts
    if missing:
        return f"unfinished ({len(planned) - len(missing)} of {len(planned)} shards written)"
    return None


def compact_run(root: str | Path, run_id: str) -> Compaction:
    """Compact finished run ``run_id`` of the catalog at ``root`` (module docstring); an
    unfinished, already compacted or busy run is skipped (``Compaction.skipped``)."""
    began = time.perf_counter()
    root = Path(root)
    work = root / WORK
    _remove_leftovers(root)
    with _locked(manifest_path(root, run_id)) as locked:
        skipped = why_not(root, run_id) or (None if locked else "no run manifest")
        if skipped:
            return Compaction(run_id, skipped=skipped)
        run_dir = root / "runs" / run_id
        name = f"{run_id}.{os.getpid()}.{threading.get_native_id()}"
        new, spill = work / name, work / f"{name}.spill"
        try:
            parts, rows, files = _build(run_dir, new, spill)
            shutil.rmtree(spill, ignore_errors=True)
            _fsync_dir(work)
            if pause := float(os.environ.get(_PAUSE_ENV, "0")):
                time.sleep(pause)
            _exchange(new, run_dir)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            shutil.rmtree(spill, ignore_errors=True)
            raise
        _fsync_dir(run_dir.parent)
        shutil.rmtree(new, ignore_errors=True)  # now the old folder (else the next compaction's)
        _store_score_stats(root, run_id, run_dir)
    with contextlib.suppress(OSError):  # not empty: another compaction is under way
        work.rmdir()
    return Compaction(run_id, None, parts, len(files), rows, time.perf_counter() - began)


def _store_score_stats(root: Path, run_id: str, run_dir: Path) -> None:
    """Keep the compacted run's score statistics beside it (``winnow.catalog.stats``)."""
    from winnow.catalog.stats import write_score_cache  # stats reads this module's state file

    # A cache: if it cannot be written, `catalog stats` computes the run's statistics instead.
    with contextlib.suppress(Exception):
        write_score_cache(root, run_id, read_state(run_dir)["compacted_at"])


def compact_finished(root: str | Path, run_id: str) -> str | None:
    """At the end of a run (``run.compact``): compact it; a failure is returned as a one-line
    warning, never raised (the run's parts are intact)."""
    try:
        compact_run(root, run_id)
    except Exception as err:
        return f"run {run_id} was not compacted (its parts are intact): {first_line(err)}"
    return None


def compact_catalog(root: str | Path, run_id: str | None = None) -> Iterator[Compaction]:
    """``compact_run`` of each run of the catalog at ``root`` (or of ``run_id`` only), in order."""
    runs = Path(root) / "runs"
    if run_id is None:
        if not runs.is_dir():
            raise CompactError(f"{root} is not a catalog (it has no runs/ folder)")
        ids = sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    else:
        ids = [run_id]
    for run in ids:
        yield compact_run(root, run)


def _remove_leftovers(root: Path) -> None:
    """Delete what killed compactions left in ``<root>/.compact/`` (folders of processes that
    no longer run on this machine)."""
    try:
        entries = list((root / WORK).iterdir())
    except FileNotFoundError:
        return
    for path in entries:
        match = _WORK_NAME.match(path.name)
        if match and path.is_dir() and not alive(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)


def _build(run_dir: Path, new: Path, spill: Path) -> tuple[int, int, list[str]]:
    """Write the compacted folder of ``run_dir`` at ``new``; (data files read, rows, files)."""
    import duckdb

    state = read_state(run_dir)
    done = set(state["shards"]) if state else set()
    # A part of a shard already compacted is a second copy of its rows (a concurrent duplicate run).
    inputs = [p for p in _data_files(run_dir) if _shard_of(p) not in done]
    schemas = [pq.read_schema(p) for p in inputs]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if len({str(s.metadata) for s in schemas}) > 1:  # parts of several schema versions
        schema = schema.remove_metadata()
    new.mkdir(parents=True)  # .compact/ too: a compaction that ended may have removed it
    _link_side_files(run_dir, new, frozenset({STATE, *(p.name for p in _data_files(run_dir))}))
    spill.mkdir()
    # A database file in the spill folder: its table and the sort spill to disk past
    # MEMORY_LIMIT. Parts are loaded FILES_PER_LOAD at a time, so memory does not grow with
    # their number (a scan holds every open file's reader until it ends).
    con = duckdb.connect(
        str(spill / "rows.duckdb"), config={"memory_limit": MEMORY_LIMIT, "temp_directory": str(spill)}
    )
    try:
        con.register("unified", schema.empty_table())
        con.execute("CREATE TABLE loaded AS SELECT * FROM unified")  # the parts' columns and types
        con.unregister("unified")
        for start in range(0, len(inputs), FILES_PER_LOAD):
            chunk = inputs[start : start + FILES_PER_LOAD]
            listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in chunk)
            scan = f"read_parquet([{listed}], union_by_name = true)"
            con.execute(f"INSERT INTO loaded BY NAME SELECT * FROM {scan}")
        sorted_rows = con.sql(
            "SELECT * FROM loaded ORDER BY prompt_id, candidate_index, shard_id, candidate_id"
        ).to_arrow_reader(ROW_GROUP_ROWS)
        files, rows, shards = _write_files(sorted_rows, schema, new)
    finally:
        con.close()
    state = {
        "shards": sorted(done | shards),
        "rows": rows,
        "files": files,
        "compacted_at": datetime.now(UTC).isoformat(),
    }
    _write_synced(new / STATE, json.dumps(state, indent=2).encode())
    _fsync_dir(new)
    return len(inputs), rows, files


def _write_files(
    batches: pa.RecordBatchReader, schema: pa.Schema, new: Path
) -> tuple[list[str], int, set[str]]:
    """Write ``batches`` (sorted) as ``compacted-<k>.parquet`` files of at most ``FILE_ROWS``
    rows with ``schema``'s types; (file names, rows, shard ids)."""
    files: list[str] = []
    rows, shards = 0, set()
    writer = None
    try:
        for group in _row_groups(batches, schema):
            if writer is None or writer.rows >= FILE_ROWS:
                if writer is not None:
                    writer.close()
                files.append(f"compacted-{len(files):05d}.parquet")
                writer = _Writer(new / files[-1], schema)
            writer.write(group)
            rows += group.num_rows
            shards.update(pc.unique(group["shard_id"]).to_pylist())
        if writer is None:  # a run of empty shards: one empty file keeps its columns
            files.append("compacted-00000.parquet")
            writer = _Writer(new / files[-1], schema)
    finally:
        if writer is not None:
            writer.close()
    return files, rows, shards


def _row_groups(batches: pa.RecordBatchReader, schema: pa.Schema) -> Iterator[pa.Table]:
    """``batches`` regrouped into tables of ``ROW_GROUP_ROWS`` rows (the last one fewer), cast
    to ``schema`` (DuckDB's Arrow types -> the parts' own)."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        pending.append(batch)
        size += batch.num_rows
        while size >= ROW_GROUP_ROWS:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, ROW_GROUP_ROWS).cast(schema)
            rest = table.slice(ROW_GROUP_ROWS)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending).cast(schema)


class _Writer:
    """One compacted file: zstd, ``ROW_GROUP_ROWS``-row groups, fsynced on close."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.rows = path, 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        with open(self.path, "rb+") as f:
            os.fsync(f.fileno())


def _link_side_files(source: Path, target: Path, skip: frozenset[str] = frozenset()) -> None:
    """Hard-link ``source``'s files but ``skip`` (the manifest, the stored embeddings) into
    ``target``, folders recreated; writer temp files (dot-files) are left out."""
    for path in source.iterdir():
        if path.name.startswith(".") or path.name in skip:
            continue
        if path.is_dir():
            (target / path.name).mkdir()
            _link_side_files(path, target / path.name)
        else:
            os.link(path, target / path.name)
    _fsync_dir(target)


def _exchange(a: Path, b: Path) -> None:
    """Swap folders ``a`` and ``b`` in one step (``renameat2(RENAME_EXCHANGE)``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise CompactError("cannot compact here: this system's C library has no renameat2 (Linux only)")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise CompactError(
            f"cannot swap {a} with {b} atomically ({os.strerror(code)}): compaction needs a Linux "
            "file system with RENAME_EXCHANGE; nothing was changed"
        )


@contextlib.contextmanager
def _locked(manifest: Path) -> Iterator[bool]:
    """An exclusive ``flock`` on the run's manifest (yields False if it has none): compactions of
    one run, in threads or processes, take turns. The manifest is hard-linked into the new
    folder, so the lock is the same file before and after the swap, and no lock file is left."""
    import fcntl  # POSIX only; elsewhere compaction fails (one line), resume still works

    try:
        fd = os.open(manifest, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file is closed
        yield True
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
