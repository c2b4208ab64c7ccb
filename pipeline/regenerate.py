"""Regenerate a catalog row from what the catalog records, and check it against its hash.

The generator is rebuilt from the run's manifest (``winnow.catalog.manifest``): its resolved
``generator`` section, so every setting the run used is used again (single-file config,
channels-last, compile, VAE slicing, ...), and its pruning's preview decoder. Runs written
before manifests existed are rebuilt from the rows' columns (model, steps, guidance, size,
scheduler), which is faithful for runs that used no other generator setting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from winnow.catalog.manifest import Manifest, ManifestError, find_manifest
from winnow.catalog.writer import encode_png
from winnow.models.errors import WinnowError
from winnow.models.generator import Generator, GeneratorParams, Request, to_uint8
from winnow.models.prune import Prune
from winnow.models.sources import resolve
from winnow.pipeline.engine import PRUNED


def regenerate(shard_rows: pd.DataFrame, candidate_id: str, manifest: Manifest | None = None) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of ``candidate_id``, regenerated.

    ``shard_rows`` are the rows of the candidate's shard: its whole pipeline call (same
    ``batch_index``, in ``batch_position`` order, padded and pruned as it was) is rerun, so the
    result is bit-identical on the same device type, not merely close. ``manifest`` is the
    run's (None for a run without one: the generator is then rebuilt from the rows).
    """
    match = shard_rows[shard_rows["candidate_id"] == candidate_id]
    if match.empty:
        raise WinnowError(f"candidate {candidate_id!r} is not in these catalog rows")
    row = match.iloc[0]
    pruned_at = _pruned_at(match)[0]
    if pruned_at:
        raise WinnowError(f"candidate {candidate_id!r} was pruned at step {pruned_at}: it has no final image")
    _check_unchanged(row["model"], row["model_fingerprint"])
    params = _params(row, manifest)
    call = shard_rows[shard_rows["batch_index"] == row["batch_index"]].sort_values("batch_position")
    requests = [Request(r.prompt, r.negative_prompt, int(r.seed)) for r in call.itertuples()]
    generator = Generator(params)
    steps = _pruned_at(call)
    prune = None
    if any(steps):  # replay the call's pruning: the same candidates stop at the same step
        survivors = torch.tensor([s == 0 for s in steps])
        preview = (manifest.config.get("prune") or {}).get("preview", "vae") if manifest else "vae"
        decoder = None if preview == "vae" else generator.preview_decoder(preview)
        prune = Prune(max(steps), lambda rows, previews: survivors[rows], decoder=decoder)
    batch = next(generator.generate(requests, prune))
    position = batch.rows.index(list(call["candidate_id"]).index(candidate_id))
    return to_uint8(batch.images[position : position + 1]).numpy()[0]


def _params(row: pd.Series, manifest: Manifest | None) -> GeneratorParams:
    """The generator settings of ``row``'s pipeline call: the manifest's resolved generator
    section (the rows' columns without one), at the call's recorded batch size, on the
    recorded device type and dtype."""
    call = {"device": row["device"], "dtype": row["dtype"], "batch_size": int(row["batch_size"])}
    if manifest is None:
        return GeneratorParams(
            model=row["model"],
            steps=int(row["steps"]),
            guidance=float(row["guidance"]),
            width=int(row["width"]),
            height=int(row["height"]),
            scheduler=row["scheduler"],
            **call,
        )
    if manifest.config_hash != row["config_hash"]:
        raise ManifestError(
            f"the manifest of run {manifest.run_id!r} has config hash {manifest.config_hash}, "
            f"its rows {row['config_hash']}: it describes another run"
        )
    for key, model in manifest.models.items():
        if key.startswith("generator."):
            _check_unchanged(model.ref, model.fingerprint)
    return GeneratorParams.model_validate({**manifest.config["generator"], **call})


def _check_unchanged(ref: str, recorded: str | None) -> None:
    """A ``WinnowError`` if the model ``ref`` no longer resolves to the ``recorded`` fingerprint."""
    now = resolve(ref).fingerprint
    if now != recorded:
        raise WinnowError(
            f"model {ref!r} has changed since the row was written (fingerprint {now} != {recorded})"
        )


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
    what the catalog at ``root`` records, and hash it as the writer would.

    Reads two things by predicate, never the whole catalog: the candidate's row (by id, and
    run), then the rows of its shard, the pipeline call's context."""
    from winnow.catalog.query import rows_where, sql_string

    match = rows_where(root, f"candidate_id = {sql_string(candidate_id)}", run_id=run_id).to_pandas()
    runs = sorted(match["run_id"].unique())
    if not runs:
        where = f"run {run_id!r}" if run_id else "the catalog"
        raise WinnowError(f"candidate {candidate_id!r} is not in {where} at {root}")
    if len(runs) > 1:
        raise WinnowError(f"candidate {candidate_id!r} is in runs {', '.join(runs)}: pick one with --run")
    row = match.iloc[0]
    if row["source"] != "generated":
        raise WinnowError(f"candidate {candidate_id!r} is an {row['source']} image: nothing to regenerate")
    shard = rows_where(root, f"shard_id = {sql_string(row['shard_id'])}", run_id=row["run_id"]).to_pandas()
    pixels = regenerate(shard, candidate_id, find_manifest(root, row["run_id"]))
    digest = hashlib.sha256(encode_png(pixels)).hexdigest()
    stored = row["image_sha256"] if isinstance(row["image_sha256"], str) else None
    return Check(row["run_id"], candidate_id, stored, digest, pixels)
