"""Read a whole catalog: every finished part of every run, under one unified schema.

Parts written by different runs may have different columns (a scorer added later, a column
added by a newer schema version). Readers here unify them by name: a column missing from a
part is null in its rows. Rows written before ``source`` existed (schema version 1) are all
generated, and read back as ``source = 'generated'``.

Two ways in:

- pandas: ``read_catalog(root)`` (or ``read_table`` for Arrow);
- SQL: ``connect(root)`` gives a DuckDB connection with a view named ``catalog`` over
  ``read_parquet('<root>/runs/*/*.parquet', union_by_name = true)``.

Only finished parts are read: the writer's temporary files are dot-files named ``*.tmp``,
which neither the glob below nor pyarrow's dataset discovery picks up.

Both ways join the side tables of later steps by ``(run_id, candidate_id)``, never rewriting a
part: rescored scores (``winnow.catalog.rescore``) fill ``score_<scorer>`` where a part has
none, and the dedup decisions (``winnow.catalog.dedup``) add ``dedup_kept``,
``duplicate_of_run``, ``duplicate_of`` and ``dedup_cosine``. A person's decisions
(``winnow.catalog.labels``, ``winnow review``) add ``human_decision`` and ``kept_final``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from winnow.catalog.dedup import COLUMNS as DEDUP_COLUMNS
from winnow.catalog.dedup import decisions_path, read_decisions
from winnow.catalog.labels import label_parts, latest, latest_sql
from winnow.catalog.rescore import read_rescored, rescored
from winnow.catalog.schema import score_column
from winnow.models.errors import WinnowError, first_line

VIEW = "catalog"


class CatalogError(WinnowError):
    """A catalog folder that is missing, empty, or a query that fails."""


def part_files(root: str | Path, run_id: str | None = None) -> list[Path]:
    """The finished Parquet parts under ``root`` (of one run if given), in a stable order."""
    runs = Path(root) / "runs"
    pattern = f"{run_id}/*.parquet" if run_id else "*/*.parquet"
    return sorted(p for p in runs.glob(pattern) if not p.name.startswith((".", "_")))


def prompt_ids(root: str | Path, except_run: str | None = None) -> set[str]:
    """The prompt ids in the catalog at ``root`` (empty if it has none yet), leaving out the
    rows of run ``except_run``. Reads only the ``prompt_id`` column."""
    parts = [p for p in part_files(root) if p.parent.name != except_run]
    if not parts:
        return set()
    column = ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=["prompt_id"])[0]
    return set(pc.unique(column).to_pylist())


def _require_parts(root: str | Path, run_id: str | None) -> list[Path]:
    parts = part_files(root, run_id)
    if not parts:
        where = f"run {run_id!r} in {root}" if run_id else str(root)
        raise CatalogError(f"no catalog parts found for {where} (expected runs/<run_id>/shard-*.parquet)")
    return parts


def read_table(root: str | Path, run_id: str | None = None) -> pa.Table:
    """All rows (of ``run_id`` if given) as one Arrow table with the union of all parts' columns."""
    tables = [pq.read_table(p) for p in _require_parts(root, run_id)]
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


def connect(root: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the view ``catalog`` over every finished part."""
    _require_parts(root, None)
    glob = str(Path(root).resolve() / "runs" / "*" / "*.parquet").replace("'", "''")
    con = duckdb.connect()
    source = f"read_parquet('{glob}', union_by_name = true)"
    columns = [row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()]
    if "source" in columns:
        select = "SELECT * REPLACE (coalesce(source, 'generated') AS source)"
    else:
        select = "SELECT *, 'generated' AS source"
    joined = _side_table_joins(root, f"{select} FROM {source}", columns)
    con.execute(f"CREATE VIEW {VIEW} AS {_label_join(root, joined)}")
    return con


def _quoted(path: Path) -> str:
    return "'" + str(path.resolve()).replace("'", "''") + "'"


def _side_table_joins(root: str | Path, parts: str, columns: list[str]) -> str:
    """The view's SQL: ``parts`` (a SELECT over the parts) with the side tables joined."""
    replaced, added, joins = [], [], []
    for k, (name, paths) in enumerate(rescored(root).items()):
        files = ", ".join(_quoted(p) for p in paths)
        joins.append(
            f"LEFT JOIN (SELECT run_id, candidate_id, score FROM read_parquet([{files}])) r{k} "
            f"ON p.run_id = r{k}.run_id AND p.candidate_id = r{k}.candidate_id"
        )
        column = score_column(name)
        if column in columns:
            replaced.append(f"coalesce(p.{column}, r{k}.score) AS {column}")
        else:
            added.append(f"r{k}.score AS {column}")
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


def query(root: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` (which may name the view ``catalog``) and return the result as Arrow."""
    con = connect(root)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as err:
        raise CatalogError(f"query failed: {first_line(err)}") from None
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
    ordered by ``order`` (catalog order by default)."""
    conditions = [*conditions, *([f"({where})"] if where else [])]
    if run_id:
        conditions.append(f"run_id = '{run_id.replace(chr(39), chr(39) * 2)}'")
    clause = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return query(root, f"SELECT * FROM {VIEW} {clause} ORDER BY {order}")
