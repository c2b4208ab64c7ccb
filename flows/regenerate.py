"""Regenerate a catalog row from what the catalog records, and check it against its hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from models.errors import WinnowError
from models.generator import Generator, GeneratorParams, Request, to_uint8
from models.sources import resolve


def regenerate(shard_rows: pd.DataFrame, candidate_id: str) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of ``candidate_id``, regenerated.

    ``shard_rows`` are the rows of the candidate's shard: its whole pipeline call (same
    ``batch_index``, in ``batch_position`` order, padded as it was) is rerun, so the result is
    bit-identical on the same device type, not merely close.
    """
    match = shard_rows[shard_rows["candidate_id"] == candidate_id]
    if match.empty:
        raise WinnowError(f"candidate {candidate_id!r} is not in these catalog rows")
    row = match.iloc[0]
    if resolve(row["model"]).fingerprint != row["model_fingerprint"]:
        raise WinnowError(
            f"model {row['model']!r} has changed since the row was written "
            f"(fingerprint {resolve(row['model']).fingerprint} != {row['model_fingerprint']})"
        )
    call = shard_rows[shard_rows["batch_index"] == row["batch_index"]].sort_values("batch_position")
    params = GeneratorParams(
        model=row["model"],
        steps=int(row["steps"]),
        guidance=float(row["guidance"]),
        width=int(row["width"]),
        height=int(row["height"]),
        scheduler=row["scheduler"],
        dtype=row["dtype"],
        device=row["device"],
        batch_size=int(row["batch_size"]),
    )
    requests = [Request(r.prompt, r.negative_prompt, int(r.seed)) for r in call.itertuples()]
    batch = next(Generator(params).generate(requests))
    position = list(call["candidate_id"]).index(candidate_id)
    return to_uint8(batch.images[position : position + 1]).numpy()[0]


def read_png(root: Path, relpath: str) -> np.ndarray:
    with Image.open(root / relpath) as img:
        return np.asarray(img.convert("RGB"))
