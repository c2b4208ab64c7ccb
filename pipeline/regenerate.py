"""Regenerate a catalog row from what the catalog records, and check it against its hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from winnow.catalog.writer import encode_png
from winnow.models.errors import WinnowError
from winnow.models.generator import Generator, GeneratorParams, Request, to_uint8
from winnow.models.prune import Prune
from winnow.models.sources import resolve
from winnow.pipeline.engine import PRUNED


def regenerate(shard_rows: pd.DataFrame, candidate_id: str) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of ``candidate_id``, regenerated.

    ``shard_rows`` are the rows of the candidate's shard: its whole pipeline call (same
    ``batch_index``, in ``batch_position`` order, padded and pruned as it was) is rerun, so the
    result is bit-identical on the same device type, not merely close.
    """
    match = shard_rows[shard_rows["candidate_id"] == candidate_id]
    if match.empty:
        raise WinnowError(f"candidate {candidate_id!r} is not in these catalog rows")
    row = match.iloc[0]
    pruned_at = _pruned_at(match)[0]
    if pruned_at:
        raise WinnowError(f"candidate {candidate_id!r} was pruned at step {pruned_at}: it has no final image")
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
    steps = _pruned_at(call)
    prune = None
    if any(steps):  # replay the call's pruning: the same candidates stop at the same step
        survivors = torch.tensor([s == 0 for s in steps])
        prune = Prune(max(steps), lambda rows, previews: survivors[rows])
    batch = next(Generator(params).generate(requests, prune))
    position = batch.rows.index(list(call["candidate_id"]).index(candidate_id))
    return to_uint8(batch.images[position : position + 1]).numpy()[0]


def _pruned_at(rows: pd.DataFrame) -> list[int]:
    """The step each row was pruned at (0 = not pruned)."""
    steps = rows["reject_reason"].astype("string").str.extract(rf"^{PRUNED}:(\d+)$")[0]
    return [int(s) for s in steps.fillna("0")]


def read_png(root: Path, relpath: str) -> np.ndarray:
    with Image.open(root / relpath) as img:
        return np.asarray(img.convert("RGB"))


@dataclass(frozen=True)
class Check:
    """The outcome of regenerating one catalog row: ``stored`` is the recorded sha256 of its
    image (None when no image was saved), ``regenerated`` the sha256 of the new PNG."""

    run_id: str
    candidate_id: str
    stored: str | None
    regenerated: str
    pixels: np.ndarray

    @property
    def match(self) -> bool | None:
        """True/False against the stored hash; None when there is nothing to compare with."""
        return None if self.stored is None else self.stored == self.regenerated


def check_row(root: str | Path, candidate_id: str, run_id: str | None = None) -> Check:
    """Regenerate ``candidate_id`` (of ``run_id``, needed only when several runs hold it) from
    what the catalog at ``root`` records, and hash it as the writer would."""
    from winnow.catalog.query import read_catalog

    rows = read_catalog(root, run_id)
    match = rows[rows["candidate_id"] == candidate_id]
    runs = sorted(match["run_id"].unique())
    if not runs:
        where = f"run {run_id!r}" if run_id else "the catalog"
        raise WinnowError(f"candidate {candidate_id!r} is not in {where} at {root}")
    if len(runs) > 1:
        raise WinnowError(f"candidate {candidate_id!r} is in runs {', '.join(runs)}: pick one with --run")
    row = match.iloc[0]
    if row["source"] != "generated":
        raise WinnowError(f"candidate {candidate_id!r} is an {row['source']} image: nothing to regenerate")
    shard = rows[(rows["run_id"] == row["run_id"]) & (rows["shard_id"] == row["shard_id"])]
    pixels = regenerate(shard, candidate_id)
    digest = hashlib.sha256(encode_png(pixels)).hexdigest()
    stored = row["image_sha256"] if isinstance(row["image_sha256"], str) else None
    return Check(row["run_id"], candidate_id, stored, digest, pixels)
