"""Bring your own images: score a folder of existing images and catalog them as ``external``.

The images get the same scorers and selection policy as generated candidates: images with
the same prompt are the candidates of that prompt, ranked and kept by the policy. Rows get
``source = 'external'``; generator columns (seed, model, steps, ...) are null, ``width`` /
``height`` are the image's own, ``prompt_meta`` records the file (``{"file": relative
path}``). Kept images (all of them with ``save_rejected``) are copied byte for byte into
``images/<run_id>/<candidate_id><suffix>``: names come from ids, never from prompt text or
file names.

Prompts come from (``prompts_from``):

- ``sidecar``: ``<image stem>.txt`` beside each image (its stripped text);
- ``csv:FILE``: a CSV file with columns ``file`` (path relative to the folder, or a bare
  file name) and ``prompt``;
- ``filename``: the file's stem with ``_`` turned into spaces.

Files that are not readable images, or that have no prompt, are listed in the result and
skipped, never fatal. Like a run, a scoring run is resumable: its id defaults to a hash of
the scorers, policy and the images (paths, prompts, bytes), and finished shards are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError

from winnow.catalog.schema import SCHEMA_VERSION, schema, score_column
from winnow.catalog.writer import atomic_write, part_path, write_part
from winnow.models.errors import WinnowError
from winnow.scoring.base import Candidates, ScorerParams, build_scorers
from winnow.scoring.select import Policy, select

SIDECAR_SUFFIXES = {".txt", ".caption"}
BATCH = 16  # images per scorer call (images of one size)


class ExternalImagesError(WinnowError):
    """A folder or prompt source that cannot be used at all."""


@dataclass(frozen=True)
class Found:
    """A readable image with its prompt."""

    path: Path
    rel: str  # path relative to the scanned folder, with forward slashes
    prompt: str
    sha256: str


@dataclass
class ScoreResult:
    run_id: str
    catalog: Path
    images: int = 0  # rows in the catalog for this run
    kept: int = 0
    shards: int = 0
    skipped_shards: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)


def prompt_id(text: str, negative: str = "") -> str:
    """The same content hash ``winnow.pipeline.prompts`` gives a prompt."""
    return hashlib.blake2b(f"{text}\x1f{negative}".encode(), digest_size=8).hexdigest()


def _csv_prompts(spec: str) -> dict[str, str]:
    path = Path(spec)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = {name.strip().lower(): name for name in reader.fieldnames or []}
            if "file" not in fields or "prompt" not in fields:
                raise ExternalImagesError(f"{path}: needs columns 'file' and 'prompt'")
            return {row[fields["file"]].strip(): row[fields["prompt"]] for row in reader}
    except OSError as err:
        raise ExternalImagesError(f"cannot read prompt CSV {path}: {err.strerror or err}") from None


def find_images(folder: str | Path, prompts_from: str) -> tuple[list[Found], list[tuple[str, str]]]:
    """The readable images under ``folder`` (recursive, hidden files ignored, sorted) with
    their prompts, and the skipped files as (relative path, reason)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExternalImagesError(f"image folder not found: {folder}")
    table: dict[str, str] | None = None
    csv_file: Path | None = None
    if prompts_from.startswith("csv:"):
        csv_file = Path(prompts_from[4:]).resolve()
        table = _csv_prompts(prompts_from[4:])
    elif prompts_from not in ("sidecar", "filename"):
        raise ExternalImagesError(f"--prompts-from {prompts_from!r}: use sidecar, csv:FILE or filename")
    found, skipped = [], []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.resolve() == csv_file or (prompts_from == "sidecar" and path.suffix in SIDECAR_SUFFIXES):
            continue
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            skipped.append((rel, f"not a readable image ({type(err).__name__})"))
            continue
        if prompts_from == "filename":
            prompt = path.stem.replace("_", " ").strip()
        elif prompts_from == "sidecar":
            sidecar = path.with_suffix(".txt")
            prompt = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        else:
            assert table is not None
            prompt = table.get(rel, table.get(path.name, "")).strip()
        if not prompt:
            skipped.append((rel, f"no prompt ({prompts_from})"))
            continue
        found.append(Found(path, rel, prompt, hashlib.sha256(data).hexdigest()))
    return found, skipped


def _versions() -> str:
    return json.dumps({p: version(p) for p in ("winnow", "torch", "open_clip_torch")}, sort_keys=True)


def score_folder(
    folder: str | Path,
    prompts_from: str,
    scorers: Mapping[str, ScorerParams],
    policy: Policy,
    root: str | Path,
    run_id: str | None = None,
    shard_size: int = 8,
    save_rejected: bool = False,
    device: str = "auto",
) -> ScoreResult:
    """Score the images under ``folder`` and write them into the catalog at ``root``."""
    found, skipped = find_images(folder, prompts_from)
    if not found:
        raise ExternalImagesError(f"no readable images with prompts in {folder} ({len(skipped)} skipped)")
    given = {name: params.as_given() for name, params in scorers.items()}
    settings = json.dumps({"scorers": given, "select": policy.model_dump(mode="json")}, sort_keys=True)
    config_hash = hashlib.sha256(settings.encode()).hexdigest()[:16]
    if run_id is None:
        digest = hashlib.sha256(f"external\x1e{config_hash}".encode())
        for f in found:
            digest.update(f"{f.rel}\x1f{f.prompt}\x1f{f.sha256}\x1e".encode())
        run_id = "ext-" + digest.hexdigest()[:12]

    by_prompt: dict[str, list[Found]] = {}
    for f in found:
        by_prompt.setdefault(f.prompt, []).append(f)
    prompts = list(by_prompt)
    root = Path(root)
    result = ScoreResult(run_id, root, skipped=skipped)
    torch_device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    built = None
    for number, start in enumerate(range(0, len(prompts), shard_size)):
        shard_id = f"{number:05d}"
        members = [(p, i, f) for p in prompts[start : start + shard_size] for i, f in enumerate(by_prompt[p])]
        result.shards += 1
        result.images += len(members)
        part = part_path(root, run_id, shard_id)
        if part.exists():
            result.skipped_shards += 1
            continue
        if built is None:
            built = build_scorers(scorers, torch_device)
            for scorer in built:
                scorer.setup()
        rows = _score_shard(
            members, built, policy, root, run_id, shard_id, torch_device, save_rejected, config_hash
        )
        write_part(part, pa.Table.from_pylist(rows, schema=schema([s.name for s in built])))
    for number in range(result.shards):
        kept = pq.read_table(part_path(root, run_id, f"{number:05d}"), columns=["kept"])["kept"]
        result.kept += int(pc.sum(kept).as_py() or 0)
    return result


def _score_shard(
    members: list[tuple[str, int, Found]],
    scorers: list,
    policy: Policy,
    root: Path,
    run_id: str,
    shard_id: str,
    device: torch.device,
    save_rejected: bool,
    config_hash: str,
) -> list[dict[str, Any]]:
    """Score one shard's images, select, copy the kept images in; return its rows."""
    n = len(members)
    pixels: list[torch.Tensor] = []
    for _, _, f in members:
        with Image.open(f.path) as img:
            rgb = np.asarray(img.convert("RGB"))
        pixels.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0)
    scores = {s.name: np.full(n, np.nan) for s in scorers}
    seconds = np.zeros(n)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(pixels):
        by_size.setdefault(tuple(image.shape), []).append(i)
    for indices in by_size.values():
        for begin in range(0, len(indices), BATCH):
            chunk = indices[begin : begin + BATCH]
            began = time.perf_counter()
            batch = Candidates(
                torch.stack([pixels[i] for i in chunk]).to(device), [members[i][0] for i in chunk]
            )
            for scorer in scorers:
                scores[scorer.name][chunk] = scorer.score(batch).double().numpy()
            seconds[chunk] = (time.perf_counter() - began) / len(chunk)
    ids = [prompt_id(p) for p, _, _ in members]
    chosen = select(scores, np.array(ids), policy)
    candidate_ids = [f"{pid}-{i:03d}" for pid, (_, i, _) in zip(ids, members, strict=True)]
    paths: list[str | None] = []
    hashes: list[str | None] = []
    for k, (_, _, f) in enumerate(members):
        if chosen.kept[k] or save_rejected:
            rel = f"images/{run_id}/{candidate_ids[k]}{f.path.suffix.lower()}"
            data = f.path.read_bytes()
            atomic_write(root / rel, data)
            paths.append(rel)
            hashes.append(hashlib.sha256(data).hexdigest())
        else:
            paths.append(None)
            hashes.append(None)
    now, versions = datetime.now(UTC), _versions()
    rows = []
    for k, (text, index, f) in enumerate(members):
        rows.append(
            {
                "schema_version": SCHEMA_VERSION,
                "run_id": run_id,
                "source": "external",
                "shard_id": shard_id,
                "prompt_id": ids[k],
                "candidate_id": candidate_ids[k],
                "candidate_index": index,
                "prompt": text,
                "negative_prompt": "",
                "prompt_meta": json.dumps({"file": f.rel}, ensure_ascii=False),
                "width": int(pixels[k].shape[2]),
                "height": int(pixels[k].shape[1]),
                "device": device.type,
                **{score_column(name): float(values[k]) for name, values in scores.items()},
                "combined_score": float(chosen.combined[k]),
                "rank": int(chosen.rank[k]),
                "kept": bool(chosen.kept[k]),
                "reject_reason": chosen.reason[k],
                "image_path": paths[k],
                "image_sha256": hashes[k],
                "scoring_seconds": float(seconds[k]),
                "created_at": now,
                "config_hash": config_hash,
                "versions": versions,
            }
        )
    return rows
