"""Read a whole catalog: every finished part of every run, under one unified schema.

Parts written by different runs may have different columns (a scorer added later, a column
added by a newer schema version). Readers here unify them by name: a column missing from a
part is null in its rows. Rows written before ``source`` existed (schema version 1) are all
generated, and read back as ``source = 'generated'``.

Two ways in:

- pandas: ``read_catalog(root)`` (or ``read_table`` for Arrow);
- SQL: ``connect(root)`` gives a DuckDB connection with a view named ``catalog`` over
  ``read_parquet('<root>/runs/*/*.parquet', union_by_name = true)``. Aggregations run in
  DuckDB over only the columns a query names, within ``MEMORY_LIMIT`` (spilling to a temporary
  folder beyond it), so the large readers (``catalog stats``, ``report``, ``regenerate``'s
  lookup, ``prompt_ids``) never hold the catalog in memory. ``read_catalog`` materialises
  every row: it is for small catalogs and the readers that need every row of a run.

Only finished parts are read: the writer's temporary files are dot-files named ``*.tmp``,
which neither the glob below nor pyarrow's dataset discovery picks up.

Both ways join the side tables of later steps by ``(run_id, candidate_id)``, never rewriting a
part: rescored scores (``winnow.catalog.rescore``) fill ``score_<scorer>`` where a part has
none, and the dedup decisions (``winnow.catalog.dedup``) add ``dedup_kept``,
``duplicate_of_run``, ``duplicate_of`` and ``dedup_cosine``. A person's decisions
(``winnow.catalog.labels``, ``winnow review``) add ``human_decision`` and ``kept_final``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from winnow.catalog.dedup import COLUMNS as DEDUP_COLUMNS
from winnow.catalog.dedup import decisions_path, read_decisions
from winnow.catalog.labels import label_parts, latest, latest_sql
from winnow.catalog.rescore import read_rescored, rescored
from winnow.catalog.schema import score_column
from winnow.models.errors import WinnowError, first_line

VIEW = "catalog"
MEMORY_LIMIT = "1GB"  # DuckDB's working memory per connection; larger sorts and joins spill to disk


class CatalogError(WinnowError):
    """A catalog folder that is missing, empty, or a query that fails."""


def part_files(root: str | Path, run_id: str | None = None) -> list[Path]:
    """The finished Parquet parts under ``root`` (of one run if given), in a stable order."""
    runs = Path(root) / "runs"
    pattern = f"{run_id}/*.parquet" if run_id else "*/*.parquet"
    return sorted(p for p in runs.glob(pattern) if not p.name.startswith((".", "_")))


def prompt_ids(root: str | Path, except_run: str | None = None) -> set[str]:
    """The prompt ids in the catalog at ``root`` (empty if it has none yet), leaving out the
    rows of run ``except_run``. DuckDB reads only the ``prompt_id`` column, and none of
    ``except_run``'s files."""
    if not _has_parts(root):
        return set()
    sql = f"SELECT DISTINCT prompt_id FROM read_parquet({_quoted_glob(root)}, filename = true)"
    if except_run:  # a filter on the file name: DuckDB skips those files unopened
        folder = str(Path(root).resolve() / "runs" / except_run) + os.sep
        sql += f" WHERE NOT starts_with(filename, {sql_string(folder)})"
    with _duckdb() as con:
        column = con.sql(sql).to_arrow_table()["prompt_id"]
    return set(column.to_pylist())


def _has_parts(root: str | Path, run_id: str | None = None) -> bool:
    """Whether ``root`` has a finished part (of ``run_id`` if given); stops at the first one."""
    pattern = f"{run_id}/*.parquet" if run_id else "*/*.parquet"
    return any(not p.name.startswith((".", "_")) for p in (Path(root) / "runs").glob(pattern))


def _require_parts(root: str | Path, run_id: str | None) -> None:
    if not _has_parts(root, run_id):
        where = f"run {run_id!r} in {root}" if run_id else str(root)
        raise CatalogError(f"no catalog parts found for {where} (expected runs/<run_id>/shard-*.parquet)")


def read_table(root: str | Path, run_id: str | None = None) -> pa.Table:
    """All rows (of ``run_id`` if given) as one Arrow table with the union of all parts' columns."""
    _require_parts(root, run_id)
    tables = [pq.read_table(p) for p in part_files(root, run_id)]
    table = pa.concat_tables(tables, promote_options="permissive")
    if "source" not in table.column_names:
        table = table.append_column("source", pa.nulls(table.num_rows, pa.string()))
    source = table["source"].cast(pa.string())
    filled = pc.fill_null(source, "generated")
    table = table.set_column(table.column_names.index("source"), "source", filled)
    return _with_labels(root, _join_side_tables(root, table))


def _keys(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table["run_id"], table["candidate_id"], "\x1f")


def _join_side_tables(root: str | Path, table: pa.Table) -> pa.Table:
    """``table`` with the rescored scores and dedup decisions of its rows (module docstring)."""
    sides = [(score_column(name), read_rescored(paths), "score") for name, paths in rescored(root).items()]
    decisions = read_decisions(root)
    if decisions is not None:
        sides += [(column, decisions, column) for column in DEDUP_COLUMNS]
    if not sides:
        return table
    keys = _keys(table)
    for column, side, value in sides:
        found = pc.take(side[value], pc.index_in(keys, value_set=_keys(side)))
        if column in table.column_names:
            position = table.column_names.index(column)
            table = table.set_column(
                position, column, pc.coalesce(table[column], found.cast(table[column].type))
            )
        else:
            table = table.append_column(column, found)
    return table


def _with_labels(root: str | Path, table: pa.Table) -> pa.Table:
    """``table`` with ``human_decision`` and ``kept_final`` (``winnow.catalog.labels``)."""
    decisions = latest(root)
    if decisions is None:
        human = pa.nulls(table.num_rows, pa.string())
    else:
        human = pc.take(decisions["human_decision"], pc.index_in(_keys(table), value_set=_keys(decisions)))
    final = pc.if_else(pc.is_null(human), table["kept"], pc.equal(human, "keep"))
    return table.append_column("human_decision", human).append_column("kept_final", final)


def read_catalog(root: str | Path, run_id: str | None = None) -> pd.DataFrame:
    """``read_table`` as a pandas DataFrame (missing scores are NaN, missing strings None)."""
    return read_table(root, run_id).to_pandas()


def score_columns(columns: list[str]) -> list[str]:
    """The per-scorer columns (``score_<name>``) among ``columns``, sorted."""
    return sorted(c for c in columns if c.startswith("score_"))


def _duckdb() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection within ``MEMORY_LIMIT``, one thread per usable core,
    spilling to a folder of its own under the system temp folder (DuckDB removes it on close)."""
    spill = Path(tempfile.gettempdir()) / f"winnow-duckdb-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    threads = len(os.sched_getaffinity(0))
    config = {"memory_limit": MEMORY_LIMIT, "threads": threads, "temp_directory": str(spill)}
    con = duckdb.connect(config=config)
    con.execute("SET enable_progress_bar = false")  # never drawn over the command's own output
    return con


def _quoted_glob(root: str | Path, run_id: str | None = None) -> str:
    """The SQL string literal of the glob of ``root``'s parts (of ``run_id``'s if given)."""
    return _quoted(Path(root).resolve() / "runs" / (run_id or "*") / "*.parquet")


def connect(root: str | Path, run_id: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection (``_duckdb``) with the view ``catalog`` over every
    finished part (of run ``run_id`` only, if given: the others are never opened).

    Creating the view reads the parts' footers (their columns, unioned by name); DuckDB keeps
    them for the connection's later queries, which read only the columns they name (side
    tables add ``run_id`` and ``candidate_id``) and skip row groups by their statistics."""
    _require_parts(root, run_id)
    con = _duckdb()
    con.execute("SET parquet_metadata_cache = true")  # footers read once per connection, not per query
    # Columns the view's SQL names but an old part may lack (``source`` before schema v2, a
    # rescored scorer's column): an empty SELECT of them, unioned by name, makes them exist
    # (null) without opening any part to find out which columns the parts have.
    extra = ["NULL::VARCHAR AS source"]
    extra += [f"NULL::DOUBLE AS {score_column(name)}" for name in rescored(root)]
    parts = (
        f"SELECT * REPLACE (coalesce(source, 'generated') AS source) FROM ("
        f"SELECT * FROM read_parquet({_quoted_glob(root, run_id)}, union_by_name = true) "
        f"UNION ALL BY NAME SELECT {', '.join(extra)} WHERE false)"
    )
    try:
        con.execute(f"CREATE VIEW {VIEW} AS {_label_join(root, _side_table_joins(root, parts))}")
    except duckdb.Error as err:
        con.close()
        raise _failed(err, f"cannot read the catalog at {root}") from None
    return con


def _quoted(path: Path) -> str:
    return sql_string(str(path.resolve()))


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _side_table_joins(root: str | Path, parts: str) -> str:
    """The view's SQL: ``parts`` (a SELECT over the parts) with the side tables joined."""
    replaced, added, joins = [], [], []
    for k, (name, paths) in enumerate(rescored(root).items()):
        files = ", ".join(_quoted(p) for p in paths)
        joins.append(
            f"LEFT JOIN (SELECT run_id, candidate_id, score FROM read_parquet([{files}])) r{k} "
            f"ON p.run_id = r{k}.run_id AND p.candidate_id = r{k}.candidate_id"
        )
        column = score_column(name)
        replaced.append(f"coalesce(p.{column}, r{k}.score) AS {column}")
    if decisions_path(root).exists():
        joins.append(
            f"LEFT JOIN read_parquet({_quoted(decisions_path(root))}) d "
            "ON p.run_id = d.run_id AND p.candidate_id = d.candidate_id"
        )
        added += [f"d.{column}" for column in DEDUP_COLUMNS]
    if not joins:
        return parts
    star = f"p.* REPLACE ({', '.join(replaced)})" if replaced else "p.*"
    return f"SELECT {', '.join([star, *added])} FROM ({parts}) p {' '.join(joins)}"


def _label_join(root: str | Path, rows: str) -> str:
    """``rows`` (a SELECT) with ``human_decision`` and ``kept_final`` (``winnow.catalog.labels``)."""
    parts = label_parts(root)
    if not parts:
        return f"SELECT *, NULL::VARCHAR AS human_decision, kept AS kept_final FROM ({rows})"
    return (
        "SELECT c.*, h.human_decision, coalesce(h.human_decision = 'keep', c.kept) AS kept_final "
        f"FROM ({rows}) c LEFT JOIN ({latest_sql(parts)}) h "
        "ON c.run_id = h.run_id AND c.candidate_id = h.candidate_id"
    )


def query(root: str | Path, sql: str, run_id: str | None = None) -> pa.Table:
    """Run ``sql`` (which may name the view ``catalog``, over run ``run_id`` only if given) and
    return the result as Arrow. A query that finds a part gone (its run was compacted between
    listing the files and reading them: ``winnow.catalog.compact``) runs once more, over the
    compacted files."""
    try:
        return _query_once(root, sql, run_id)
    except _PartGoneError:
        return _query_once(root, sql, run_id)


class _PartGoneError(CatalogError):
    """A part listed by a query was gone when it was read."""


def _failed(err: duckdb.Error, what: str) -> CatalogError:
    """The one-line error of DuckDB's ``err`` (``_PartGoneError`` for a vanished part)."""
    gone = isinstance(err, duckdb.IOException) and "No such file" in str(err)
    return (_PartGoneError if gone else CatalogError)(f"{what}: {first_line(err)}")


def _query_once(root: str | Path, sql: str, run_id: str | None) -> pa.Table:
    con = connect(root, run_id)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as err:
        raise _failed(err, "query failed") from None
    finally:
        con.close()


def rows_where(
    root: str | Path,
    *conditions: str,
    where: str | None = None,
    run_id: str | None = None,
    order: str = "run_id, shard_id, prompt_id, candidate_index",
) -> pa.Table:
    """The view's rows meeting every SQL condition (``where``: the user's; ``run_id``: one run),
    ordered by ``order`` (catalog order by default). With ``run_id`` only that run's parts are
    opened (a run without parts has no rows, as any condition that matches none)."""
    conditions = [*conditions, *([f"({where})"] if where else [])]
    if run_id:
        conditions.append(f"run_id = {sql_string(run_id)}")
    clause = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    only = run_id if run_id and _has_parts(root, run_id) else None
    return query(root, f"SELECT * FROM {VIEW} {clause} ORDER BY {order}", only)
