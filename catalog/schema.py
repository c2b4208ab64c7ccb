"""The catalog's explicit, versioned Arrow schema: one row per candidate, kept or not.

Score columns are ``score_<scorer name>`` (float64, higher is better, null where a scorer
did not run); everything else is fixed by ``SCHEMA_VERSION``. Bump the version when a
column changes meaning; adding a scorer only adds a nullable column.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

# 2: added ``source`` (rows of version 1 have none; they are all generated).
# 3: added ``round`` (adaptive N; older rows have none: they are all round 0).
SCHEMA_VERSION = 3

_BASE = [
    ("schema_version", pa.int16(), "catalog schema version of this row"),
    ("run_id", pa.string(), "run this row belongs to"),
    ("source", pa.string(), "generated (by a run) | external (scored by winnow score)"),
    ("shard_id", pa.string(), "shard (task) within the run"),
    ("prompt_id", pa.string(), "content hash of prompt + negative prompt"),
    ("candidate_id", pa.string(), "<prompt_id>-<candidate index>"),
    ("candidate_index", pa.int32(), "0..N-1 within the prompt"),
    ("round", pa.int16(), "adaptive-N round that generated it (0 = first; always 0 for a fixed N)"),
    ("prompt", pa.string(), "the prompt text"),
    ("negative_prompt", pa.string(), "the negative prompt ('' = none)"),
    ("prompt_meta", pa.string(), "JSON object of the prompt file's other columns, or template+choices"),
    ("seed", pa.int64(), "torch.Generator seed of this candidate (CPU generator)"),
    ("batch_index", pa.int32(), "pipeline call within the shard"),
    ("batch_position", pa.int32(), "position within that call"),
    ("batch_size", pa.int32(), "candidates per pipeline call (last call padded)"),
    ("model", pa.string(), "model reference as configured"),
    ("model_fingerprint", pa.string(), "hub commit sha, or hash of the local weights"),
    ("pipeline", pa.string(), "diffusers pipeline class"),
    ("scheduler", pa.string(), "diffusers scheduler class"),
    ("steps", pa.int32(), "denoising steps"),
    ("guidance", pa.float32(), "classifier-free guidance scale"),
    ("width", pa.int32(), "pixels"),
    ("height", pa.int32(), "pixels"),
    ("dtype", pa.string(), "compute dtype"),
    ("device", pa.string(), "cpu or cuda"),
    ("combined_score", pa.float64(), "weighted combination within the prompt (-inf if unscorable)"),
    ("rank", pa.int32(), "1 = best combined score within the prompt"),
    ("kept", pa.bool_(), "selected by the policy"),
    ("reject_reason", pa.string(), "null if kept; below_floor:<scorer>, not_top_k, pruned_at_step:<S>, ..."),
    ("image_path", pa.string(), "PNG path relative to the catalog root (null if not saved)"),
    ("image_sha256", pa.string(), "sha256 of the PNG file's bytes"),
    ("generation_seconds", pa.float64(), "generation wall time per candidate (its batch / batch size)"),
    ("scoring_seconds", pa.float64(), "scoring wall time per candidate"),
    ("created_at", pa.timestamp("us", tz="UTC"), "when the shard was written"),
    ("config_hash", pa.string(), "hash of the settings that determine the content"),
    ("versions", pa.string(), "JSON object: winnow, torch, diffusers, open_clip versions"),
]


def score_column(scorer: str) -> str:
    return f"score_{scorer}"


def schema(scorers: Iterable[str]) -> pa.Schema:
    """The catalog schema for a run with these scorers."""
    fields = [pa.field(name, type_, metadata={"doc": doc}) for name, type_, doc in _BASE]
    fields += [
        pa.field(score_column(s), pa.float64(), metadata={"doc": f"{s} score, higher is better"})
        for s in sorted(scorers)
    ]
    return pa.schema(fields, metadata={"winnow.schema_version": str(SCHEMA_VERSION)})
