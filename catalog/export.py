"""Export catalog rows with an image file as a training set.

Formats (the consumer each is made for):

- ``imagefolder``: ``<out>/<name>.png`` + ``<out>/metadata.jsonl`` (``file_name``, ``text`` =
  the prompt, ids, seed, scores, ...) for Hugging Face ``load_dataset("imagefolder",
  data_dir=out)`` and the diffusers text-to-image scripts (``--caption_column text``).
- ``webdataset``: ``<out>/shard-000000.tar`` ... with ``<key>.png``, ``<key>.txt`` (the
  caption) and ``<key>.json`` (the metadata) per sample, ``shard_size`` samples per tar;
  keys are ``<run_id>/<candidate_id>``.
- ``kohya``: ``<out>/<repeats>_<name>/<name>.png`` + ``<name>.txt`` caption side by side, the
  layout kohya-ss/sd-scripts reads with ``--train_data_dir <out> --caption_extension .txt``.

File names come from ids (``<run_id>_<candidate_id>``), never from prompt text. Only rows
with an image file can be exported: kept rows, and rejected ones where the run saved them
(``run.save_rejected``). Every image is checked against its recorded sha256 as it is copied;
a missing or changed file is skipped and reported, never exported.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from winnow.catalog.query import CatalogError, score_columns, select_rows

Format = Literal["imagefolder", "webdataset", "kohya"]
FORMATS: tuple[str, ...] = ("imagefolder", "webdataset", "kohya")
METADATA_COLUMNS = (
    "run_id",
    "candidate_id",
    "prompt_id",
    "source",
    "negative_prompt",
    "seed",
    "model",
    "width",
    "height",
    "kept",
    "rank",
    "reject_reason",
    "combined_score",
    "image_sha256",
)


@dataclass
class ExportResult:
    """What an export wrote: ``samples`` images with captions, ``files`` (tar shards for
    webdataset, else images), ``bytes`` written, and rows ``skipped`` as (row id, reason)."""

    format: str
    out: Path
    samples: int = 0
    bytes: int = 0
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def sample_name(row: pd.Series) -> str:
    """``<run_id>_<candidate_id>``: unique in a catalog (candidate ids contain no ``_``)."""
    return f"{row['run_id']}_{row['candidate_id']}"


def metadata(row: pd.Series) -> dict:
    """The JSON-safe metadata of one row: ``text`` (the prompt), ids, seed, scores, ..."""
    data: dict = {"text": row["prompt"]}
    for column in (*METADATA_COLUMNS, *score_columns(list(row.index))):
        data[column] = _plain(row.get(column))
    return data


def _plain(value: object) -> object:
    """numpy/pandas scalars -> JSON values; NaN, ±inf and missing -> None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        value = value.item()  # type: ignore[union-attr]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def export(
    root: str | Path,
    fmt: str,
    out: str | Path,
    where: str | None = None,
    kept_only: bool = False,
    run_id: str | None = None,
    shard_size: int = 1000,
    repeats: int = 1,
    name: str = "winnow",
) -> ExportResult:
    """Export the rows of the catalog at ``root`` matching ``where`` (SQL over the view
    ``catalog``), ``run_id`` and ``kept_only`` that have an image, as ``fmt`` into ``out``
    (created; must be empty). ``shard_size``: samples per tar (webdataset); ``repeats`` and
    ``name``: the kohya folder ``<repeats>_<name>``."""
    if fmt not in FORMATS:
        raise CatalogError(f"unknown export format {fmt!r} (use {', '.join(FORMATS)})")
    if shard_size < 1 or repeats < 1:
        raise CatalogError("shard size and repeats must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]*", name):
        raise CatalogError(f"kohya name {name!r}: use letters, digits, space, '_', '.', '-'")
    root, out = Path(root), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CatalogError(f"export folder {out} exists and is not empty")
    rows = select_rows(root, where, run_id)
    if kept_only:
        rows = rows[rows["kept"].fillna(False).astype(bool)]
    result = ExportResult(fmt, out)
    samples: list[tuple[pd.Series, bytes]] = []
    for _, row in rows[rows["image_path"].notna()].iterrows():
        data = _read_checked(root, row, result)
        if data is not None:
            samples.append((row, data))
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "imagefolder":
        _imagefolder(samples, out, result)
    elif fmt == "webdataset":
        _webdataset(samples, out, shard_size, result)
    else:
        _kohya(samples, out / f"{repeats}_{name}", result)
    result.samples = len(samples)
    return result


def _read_checked(root: Path, row: pd.Series, result: ExportResult) -> bytes | None:
    path = root / row["image_path"]
    try:
        data = path.read_bytes()
    except OSError:
        result.skipped.append((sample_name(row), f"image file missing: {row['image_path']}"))
        return None
    if isinstance(row["image_sha256"], str) and hashlib.sha256(data).hexdigest() != row["image_sha256"]:
        result.skipped.append((sample_name(row), f"image changed since cataloged: {row['image_path']}"))
        return None
    return data


def _suffix(row: pd.Series) -> str:
    return Path(row["image_path"]).suffix.lower() or ".png"


def _write(path: Path, data: bytes, result: ExportResult) -> None:
    path.write_bytes(data)
    result.bytes += len(data)


def _imagefolder(samples: list[tuple[pd.Series, bytes]], out: Path, result: ExportResult) -> None:
    lines = []
    for row, data in samples:
        file_name = sample_name(row) + _suffix(row)
        _write(out / file_name, data, result)
        result.files.append(out / file_name)
        lines.append(json.dumps({"file_name": file_name, **metadata(row)}, ensure_ascii=False))
    _write(out / "metadata.jsonl", ("\n".join(lines) + "\n" if lines else "").encode(), result)


def _webdataset(
    samples: list[tuple[pd.Series, bytes]], out: Path, shard_size: int, result: ExportResult
) -> None:
    for number, start in enumerate(range(0, len(samples), shard_size)):
        path = out / f"shard-{number:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for row, data in samples[start : start + shard_size]:
                key = f"{row['run_id']}/{row['candidate_id']}"
                meta = json.dumps(metadata(row), ensure_ascii=False, sort_keys=True).encode()
                for member, payload in (
                    (key + _suffix(row), data),
                    (f"{key}.txt", str(row["prompt"]).encode()),
                    (f"{key}.json", meta),
                ):
                    info = tarfile.TarInfo(member)
                    info.size, info.mode, info.mtime = len(payload), 0o644, 0  # reproducible tars
                    tar.addfile(info, io.BytesIO(payload))
        result.bytes += path.stat().st_size
        result.files.append(path)


def _kohya(samples: list[tuple[pd.Series, bytes]], folder: Path, result: ExportResult) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for row, data in samples:
        stem = sample_name(row)
        _write(folder / (stem + _suffix(row)), data, result)
        _write(folder / f"{stem}.txt", str(row["prompt"]).encode(), result)
        result.files.append(folder / (stem + _suffix(row)))
