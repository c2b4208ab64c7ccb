"""A person's decisions on candidates (``winnow review``), stored as data beside the runs.

Layout::

    <root>/labels/labels-<UTC time>-<random hex>.parquet

Each request of decisions is one append-only Parquet part, written atomically under a name of
its own (time + 16 random hex characters), so two reviewers deciding at once never collide
and a killed server loses at most the request in flight. A part is never rewritten.

Columns: ``candidate_id``, ``run_id``, ``prompt_id``, ``decision`` (``keep``, ``reject`` or
``clear``: withdraw a decision, so the policy's pick stands again, as an undo writes),
``reviewer``, ``decided_at`` (UTC, microseconds). The latest decision per
``(run_id, candidate_id)`` wins (ties: the later part name).

The catalog readers (``winnow.catalog.query``) join these as ``human_decision`` (``keep``,
``reject`` or null) and ``kept_final`` (the human's decision where there is one, else the
policy's ``kept``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from winnow.catalog.writer import atomic_write
from winnow.models.errors import WinnowError

DECISIONS = ("keep", "reject", "clear")
SCHEMA = pa.schema(
    [
        pa.field("candidate_id", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("decision", pa.string()),
        pa.field("reviewer", pa.string()),
        pa.field("decided_at", pa.timestamp("us", tz="UTC")),
    ]
)


class LabelError(WinnowError):
    """A decision that cannot be recorded (an unknown decision value, no candidate)."""


@dataclass(frozen=True)
class Decision:
    """One person's decision on one candidate."""

    run_id: str
    prompt_id: str
    candidate_id: str
    decision: str  # keep | reject | clear


def labels_dir(root: str | Path) -> Path:
    return Path(root) / "labels"


def label_parts(root: str | Path) -> list[Path]:
    """The finished label parts, oldest name first (temporary dot-files are never read)."""
    return sorted(p for p in labels_dir(root).glob("labels-*.parquet") if not p.name.startswith("."))


def write_labels(
    root: str | Path, decisions: Iterable[Decision], reviewer: str, now: datetime | None = None
) -> Path | None:
    """Append ``decisions`` (all made at ``now``, default: the current UTC time) as one new
    part; return its path, or None when there is nothing to write."""
    decisions = list(decisions)
    for d in decisions:
        if d.decision not in DECISIONS:
            raise LabelError(f"decision {d.decision!r}: expected one of {', '.join(DECISIONS)}")
        if not (d.run_id and d.candidate_id and d.prompt_id):
            raise LabelError("a decision needs a run_id, prompt_id and candidate_id")
    if not decisions:
        return None
    now = now or datetime.now(UTC)
    table = pa.Table.from_pydict(
        {
            "candidate_id": [d.candidate_id for d in decisions],
            "run_id": [d.run_id for d in decisions],
            "prompt_id": [d.prompt_id for d in decisions],
            "decision": [d.decision for d in decisions],
            "reviewer": [reviewer] * len(decisions),
            "decided_at": [now] * len(decisions),
        },
        schema=SCHEMA,
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    path = labels_dir(root) / f"labels-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(8)}.parquet"
    atomic_write(path, sink.getvalue().to_pybytes())
    return path


def latest_sql(parts: list[Path]) -> str:
    """SQL for the latest decision per candidate over ``parts``: ``run_id``, ``candidate_id``,
    ``human_decision`` (null where the latest is ``clear``)."""
    files = ", ".join("'" + str(p.resolve()).replace("'", "''") + "'" for p in parts)
    return (
        "SELECT run_id, candidate_id, "
        "nullif(arg_max(decision, struct_pack(t := decided_at, f := filename)), 'clear') AS human_decision "
        f"FROM read_parquet([{files}], filename = true) GROUP BY run_id, candidate_id"
    )


def latest(root: str | Path) -> pa.Table | None:
    """The latest decision per candidate (``latest_sql``'s columns), or None without labels."""
    parts = label_parts(root)
    if not parts:
        return None
    con = duckdb.connect()
    try:
        return con.sql(latest_sql(parts)).to_arrow_table()
    finally:
        con.close()


def history(root: str | Path) -> pa.Table:
    """Every decision ever written, in the order made (for audits and ``winnow calibrate``)."""
    parts = label_parts(root)
    if not parts:
        return SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])
    return table.sort_by("decided_at")
