"""The catalog's row: one typed record per candidate, kept or not, and the Arrow schema and
Parquet table built from it. Every part, generated or external, is built by ``table``.

The record is the contract: each field carries its Arrow type and meaning, the schema is
derived from the fields in order, and ``docs/catalog.md``'s column table is generated from it
(``python -m winnow.docs``). Score columns are ``score_<scorer>``
(float64, higher is better, null where a scorer did not run) and come last; everything else is
fixed by ``SCHEMA_VERSION``. Bump the version when a column changes meaning; adding a scorer
only adds a nullable column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from importlib.metadata import version
from typing import Any

import pyarrow as pa

# 2: added ``source`` (rows of version 1 have none; they are all generated).
# 3: added ``round`` (adaptive N; older rows have none: they are all round 0).
# 4: added ``safety_flagged`` (older rows have none: their pipelines' checkers were not read).
SCHEMA_VERSION = 4

# The packages whose versions every row records (the ``versions`` column), as one JSON object.
VERSIONS = json.dumps(
    {p: version(p) for p in ("winnow", "torch", "diffusers", "transformers", "open_clip_torch")},
    sort_keys=True,
)


def _col(type_: pa.DataType, doc: str) -> dict[str, Any]:
    """A record field's metadata that makes it one catalog column of Arrow type ``type_``."""
    return {"type": type_, "doc": doc}


@dataclass(frozen=True, kw_only=True)
class Generation:
    """How a candidate's image was made. A generated row has every field; an external image
    (``winnow score``) has only its own size and the device it was scored on."""

    model: str | None = field(default=None, metadata=_col(pa.string(), "model reference as configured"))
    model_fingerprint: str | None = field(
        default=None, metadata=_col(pa.string(), "hub commit sha, or hash of the local weights")
    )
    pipeline: str | None = field(default=None, metadata=_col(pa.string(), "diffusers pipeline class"))
    scheduler: str | None = field(default=None, metadata=_col(pa.string(), "diffusers scheduler class"))
    steps: int | None = field(default=None, metadata=_col(pa.int32(), "denoising steps"))
    guidance: float | None = field(
        default=None, metadata=_col(pa.float32(), "classifier-free guidance scale")
    )
    width: int | None = field(default=None, metadata=_col(pa.int32(), "pixels (an external image's own)"))
    height: int | None = field(default=None, metadata=_col(pa.int32(), "pixels (an external image's own)"))
    dtype: str | None = field(default=None, metadata=_col(pa.string(), "compute dtype"))
    device: str | None = field(
        default=None, metadata=_col(pa.string(), "`cpu` or `cuda` (external images: where they were scored)")
    )


@dataclass(eq=False, kw_only=True)
class Row:
    """One candidate as the catalog records it. The engine fills it in as the candidate is
    made, scored, selected and written; ``table`` turns a shard's rows into its part. Columns
    that do not apply to a row (the generator's, for an external image) are null."""

    schema_version: int = field(
        default=SCHEMA_VERSION, metadata=_col(pa.int16(), "catalog schema version of this row")
    )
    run_id: str = field(metadata=_col(pa.string(), "run this row belongs to"))
    source: str = field(
        metadata=_col(pa.string(), "`generated` (by `winnow run`) or `external` (by `winnow score`)")
    )
    shard_id: str = field(metadata=_col(pa.string(), "shard (task) within the run"))
    prompt_id: str = field(
        metadata=_col(pa.string(), "content hash of prompt + negative prompt (16 hex characters)")
    )
    candidate_id: str = field(metadata=_col(pa.string(), "`<prompt_id>-<candidate index, 3 digits>`"))
    candidate_index: int = field(metadata=_col(pa.int32(), "0..N-1 within the prompt"))
    round: int | None = field(
        default=None,
        metadata=_col(
            pa.int16(),
            "adaptive-N round that generated it (0 = first; always 0 for a fixed N; null for external "
            "images and before v3)",
        ),
    )
    prompt: str = field(metadata=_col(pa.string(), "the prompt text"))
    negative_prompt: str = field(metadata=_col(pa.string(), "the negative prompt (`''` = none)"))
    prompt_meta: str = field(
        metadata=_col(
            pa.string(),
            "JSON object of the prompt file's other columns; for a template prompt, `template` and "
            "`choices`; for an external image, `file` (its path in the scored folder)",
        )
    )
    seed: int | None = field(
        default=None, metadata=_col(pa.int64(), "`torch.Generator` seed of this candidate (CPU generator)")
    )
    batch_index: int | None = field(default=None, metadata=_col(pa.int32(), "pipeline call within the shard"))
    batch_position: int | None = field(default=None, metadata=_col(pa.int32(), "position within that call"))
    batch_size: int | None = field(
        default=None,
        metadata=_col(pa.int32(), "candidates per pipeline call (the last call padded, unless pruned)"),
    )
    generation: Generation = field(default_factory=Generation, metadata={"nested": Generation})
    safety_flagged: bool | None = field(
        default=None,
        metadata=_col(
            pa.bool_(),
            "the generator pipeline's own safety checker flagged the image (it blacked it out: never "
            "scored, saved or kept; rejected `safety_checker`); null without a checker, for pruned "
            "candidates, external images and before v4",
        ),
    )
    combined_score: float = field(
        default=float("-inf"),
        metadata=_col(pa.float64(), "weighted combination within the prompt (`-inf` if unscorable)"),
    )
    rank: int = field(default=0, metadata=_col(pa.int32(), "1 = best combined score within the prompt"))
    kept: bool = field(default=False, metadata=_col(pa.bool_(), "selected by the policy"))
    reject_reason: str | None = field(
        default=None,
        metadata=_col(
            pa.string(),
            "null if kept; `invalid_score:<scorer>`, `below_floor:<scorer>`, `above_ceiling:<scorer>`, "
            "`not_top_k`, `pruned_at_step:<S>`, `safety_checker`",
        ),
    )
    image_path: str | None = field(
        default=None,
        metadata=_col(
            pa.string(),
            "image file relative to the catalog root, named from ids (PNG; an external image keeps "
            "its file type); null if not saved",
        ),
    )
    image_sha256: str | None = field(
        default=None, metadata=_col(pa.string(), "sha256 of the image file's bytes")
    )
    generation_seconds: float | None = field(
        default=None,
        metadata=_col(
            pa.float64(), "generation wall time per candidate (its call's / the candidates it covered)"
        ),
    )
    scoring_seconds: float = field(
        default=0.0, metadata=_col(pa.float64(), "scoring wall time per candidate")
    )
    created_at: datetime | None = field(
        default=None, metadata=_col(pa.timestamp("us", tz="UTC"), "when the shard was written")
    )
    config_hash: str = field(metadata=_col(pa.string(), "hash of the settings that determine the content"))
    versions: str = field(
        default=VERSIONS,
        metadata=_col(
            pa.string(), "JSON object: winnow, torch, diffusers, transformers, open_clip_torch versions"
        ),
    )
    scores: dict[str, float] = field(default_factory=dict)  # scorer name -> score: the score_* columns


@dataclass(frozen=True)
class Column:
    """One fixed catalog column, as the record declares it."""

    name: str
    type: pa.DataType
    doc: str
    group: str | None  # the nested record holding it (``generation``), or None


def _columns(cls: type, group: str | None = None) -> Iterator[Column]:
    for f in fields(cls):
        if "nested" in f.metadata:
            yield from _columns(f.metadata["nested"], f.name)
        elif "type" in f.metadata:
            yield Column(f.name, f.metadata["type"], f.metadata["doc"], group)


COLUMNS: tuple[Column, ...] = tuple(_columns(Row))  # the fixed columns, in order (scores follow)


def score_column(scorer: str) -> str:
    return f"score_{scorer}"


def candidate_id(prompt_id: str, index: int) -> str:
    """The id of a prompt's candidate ``index``: ``<prompt_id>-<index, 3 digits>``."""
    return f"{prompt_id}-{index:03d}"


def schema(scorers: Iterable[str]) -> pa.Schema:
    """The catalog schema for a run with these scorers."""
    fixed = [pa.field(c.name, c.type, metadata={"doc": c.doc}) for c in COLUMNS]
    scored = [
        pa.field(score_column(s), pa.float64(), metadata={"doc": f"{s} score, higher is better"})
        for s in sorted(scorers)
    ]
    return pa.schema(fixed + scored, metadata={"winnow.schema_version": str(SCHEMA_VERSION)})


def table(rows: Sequence[Row], scorers: Iterable[str]) -> pa.Table:
    """One part's Parquet table: ``rows`` under the schema for ``scorers``."""
    scorers = sorted(scorers)
    data: dict[str, list] = {}
    for c in COLUMNS:
        records = [getattr(r, c.group) for r in rows] if c.group else rows
        data[c.name] = [getattr(r, c.name) for r in records]
    for s in scorers:
        data[score_column(s)] = [r.scores.get(s) for r in rows]
    return pa.table(data, schema=schema(scorers))


_TYPE_NAMES = {"float": "float32", "double": "float64", "timestamp[us, tz=UTC]": "timestamp (UTC)"}


def columns_markdown() -> str:
    """The catalog's columns as a Markdown table (column | type | meaning): docs/catalog.md's
    generated section (``python -m winnow.docs``)."""
    lines = [
        f"Schema version {SCHEMA_VERSION}.",
        "",
        "| column | type | meaning |",
        "| --- | --- | --- |",
    ]
    for c in COLUMNS:
        lines.append(f"| `{c.name}` | {_TYPE_NAMES.get(str(c.type), str(c.type))} | {c.doc} |")
    lines.append(
        "| `score_<scorer>` | float64 | each scorer's score, higher is better (null where it did not run) |"
    )
    return "\n".join(lines)
