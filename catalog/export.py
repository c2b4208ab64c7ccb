"""Export catalog rows with an image file as a training set, with a dataset card.

Formats (the consumer each is made for), one folder or file group per split (``train``, and
those ``split`` asks for, by prompt: ``winnow.catalog.splits``):

- ``imagefolder``: ``<out>/<split>/<name>.png`` + ``<out>/<split>/metadata.jsonl``
  (``file_name`` and the sample's fields) for ``datasets.load_dataset(out)`` / ``"imagefolder"``
  and the diffusers text-to-image scripts (``--train_data_dir <out>/train --caption_column text``).
- ``webdataset``: ``<out>/<split>-000000.tar`` ... , ``shard_size`` samples per tar; each sample
  is the members ``<run_id>/<candidate_id>.png`` (an external image keeps its suffix),
  ``<run_id>/<candidate_id>.txt`` (the caption) and ``<run_id>/<candidate_id>.json`` (the
  fields), so its webdataset key is ``<run_id>/<candidate_id>``.
- ``parquet``: ``<out>/data/<split>-00000-of-0000N.parquet``, a new shard after ``shard_mb``
  MB of images, 100 rows per row group; an ``image`` struct ``{bytes, path}`` column as
  ``datasets`` writes it (the schema's ``huggingface`` metadata says it is an ``Image``), then
  the fields. ``datasets.load_dataset("parquet", ...)`` and the hub viewer read it directly.
- ``kohya``: ``<out>/<split>/<repeats>_<name>/<name>.png`` + the caption beside it
  (``caption_extension``: ``.txt``, or sd-scripts' default ``.caption``), the layout
  kohya-ss/sd-scripts reads with ``--train_data_dir <out>/train``.
- ``pairs``: preferred/rejected image pairs of the same prompt (human decisions where present,
  else the policy's) for diffusers' Diffusion-DPO script: ``winnow.catalog.export_pairs``.

The fields are the full catalog row plus the caption, split and image size
(``winnow.catalog.export_fields``), the files are written by ``winnow.catalog.export_formats``,
and ``<out>/README.md`` is the dataset card (``winnow.catalog.card``). File names come from
ids (``<run_id>_<candidate_id>``), never from prompt text. Only rows with an image file can be
exported: kept rows, and rejected ones where the run saved them (``run.save_rejected``). Every
image is checked against its recorded sha256 as it is copied; a missing or changed file is
skipped and reported, never exported.
The export is written into a hidden folder beside ``out`` and renamed into place at the end,
so a failed export leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from winnow.catalog.card import RunInfo, fields_of, run_infos, write_card
from winnow.catalog.dedup import decisions_path
from winnow.catalog.export_fields import parse_buckets, record, record_schema
from winnow.catalog.export_formats import sample_name
from winnow.catalog.export_formats import writer as make_writer
from winnow.catalog.query import CatalogError, rows_where, score_columns
from winnow.catalog.splits import TRAIN, parse_splits, split_of

if TYPE_CHECKING:
    import pyarrow as pa

    from winnow.catalog.export_formats import _Writer as Writer

FORMATS: tuple[str, ...] = ("imagefolder", "webdataset", "parquet", "kohya", "pairs")
CAPTION_EXTENSIONS = (".txt", ".caption")


@dataclass
class ExportResult:
    """What an export wrote: ``samples`` images with captions (per split in ``splits``), the
    ``files`` under ``out`` and their ``bytes``, and rows ``skipped`` as (row id, reason)."""

    format: str
    out: Path
    samples: int = 0
    bytes: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def export(
    root: str | Path,
    fmt: str,
    out: str | Path,
    where: str | None = None,
    kept_only: bool = False,
    run_id: str | None = None,
    *,
    split: str | None = None,
    split_seed: int = 0,
    shard_size: int = 1000,
    shard_mb: float = 500,
    repeats: int = 1,
    name: str = "winnow",
    caption_extension: str = ".txt",
    buckets: str | None = None,
    dedup: bool | None = None,
    pairs_per_prompt: int = 16,
) -> ExportResult:
    """Export the rows of the catalog at ``root`` matching ``where`` (SQL over the view
    ``catalog``), ``run_id`` and ``kept_only`` that have an image, as ``fmt`` into ``out``
    (created; must be absent or empty). ``split``: ``NAME=FRACTION,...`` by prompt, hashed with
    ``split_seed``; ``shard_size``: samples per tar (webdataset); ``shard_mb``: MB of images
    per Parquet shard; ``repeats``, ``name`` and ``caption_extension``: the kohya folder
    ``<repeats>_<name>`` and its captions; ``buckets``: ``WxH,...`` sizes whose nearest aspect
    ratio each sample records. ``dedup``: leave out the rows ``winnow dedup`` marked duplicates
    (default: when the catalog has dedup decisions). ``pairs_per_prompt``: the most pairs per
    prompt (``pairs``)."""
    if fmt not in FORMATS:
        raise CatalogError(f"unknown export format {fmt!r} (use {', '.join(FORMATS)})")
    if shard_size < 1 or repeats < 1 or not shard_mb > 0:
        raise CatalogError("shard size, shard MB and repeats must be positive")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]*", name):
        raise CatalogError(f"kohya name {name!r}: use letters, digits, space, '_', '.', '-'")
    if caption_extension not in CAPTION_EXTENSIONS:
        raise CatalogError(f"caption extension {caption_extension!r}: use {' or '.join(CAPTION_EXTENSIONS)}")
    spec, bucket_list = parse_splits(split), parse_buckets(buckets)
    root, out = Path(root), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CatalogError(f"export folder {out} exists and is not empty")
    if dedup is None:
        dedup = decisions_path(root).exists()
    elif dedup and not decisions_path(root).exists():
        raise CatalogError("--dedup: the catalog has no dedup decisions (run winnow dedup first)")
    if fmt == "pairs":
        if kept_only:
            raise CatalogError("--kept-only does not apply to pairs (each pair needs a rejected image)")
        from winnow.catalog.export_pairs import export_pairs  # it builds on this module

        return export_pairs(
            root,
            out,
            where,
            run_id,
            split=split,
            split_seed=split_seed,
            shard_mb=shard_mb,
            pairs_per_prompt=pairs_per_prompt,
            dedup=dedup,
        )
    rows = _select(root, where, run_id, kept_only, dedup)
    if not rows:
        raise CatalogError("no catalog rows with an image file match: nothing to export")
    by_split: dict[str, list[dict]] = {s: [] for s in (TRAIN, *spec)}  # train first, then the spec's order
    for row in rows:
        by_split[split_of(row["prompt_id"], spec, split_seed)].append(row)
    runs = run_infos(root, rows)  # reads the manifests first: a broken one stops before any write
    schema = record_schema(score_columns(list(rows[0])), bool(bucket_list))

    result = ExportResult(fmt, out)
    with staged(result) as tmp:
        writer = make_writer(fmt, tmp, schema, shard_size, shard_mb, f"{repeats}_{name}", caption_extension)
        exported: dict[str, list[dict]] = defaultdict(list)
        for split_name, split_rows in by_split.items():
            for row in split_rows:
                data = _read_checked(root, row, result)
                if data is not None:
                    writer.add(split_name, row, data, record(row, split_name, data, schema, bucket_list))
                    exported[split_name].append(row)
        writer.close()
        finish(result, tmp, writer, schema, exported, runs, spec, split_seed, caption_extension)
    return result


@contextmanager
def staged(result: ExportResult) -> Iterator[Path]:
    """A hidden folder beside ``result.out`` to write the export into: renamed to ``out`` (absent
    or an empty folder) when the block ends, then ``result.files``/``bytes`` list what it holds;
    removed if the block raises, so a failed export leaves nothing behind."""
    out = result.out
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.files = sorted(p for p in out.rglob("*") if p.is_file())
    result.bytes = sum(p.stat().st_size for p in result.files)


def finish(
    result: ExportResult,
    tmp: Path,
    writer: Writer,
    schema: pa.Schema,
    exported: dict[str, list[dict]],
    runs: list[RunInfo],
    spec: dict[str, float],
    split_seed: int,
    caption_extension: str = ".txt",
) -> None:
    """Write the dataset card into ``tmp`` (the ``staged`` folder) for the ``exported`` rows
    (split -> one row per sample, with its ``run_id`` and ``prompt_id``) of ``runs``, whose
    ``exported`` counts it sets, and the samples per split into ``result``."""
    counts = {s: (len(r), len({row["prompt_id"] for row in r})) for s, r in exported.items()}
    per_run = Counter(row["run_id"] for r in exported.values() for row in r)
    for run in runs:
        run.exported = per_run[run.run_id]
    write_card(
        tmp,
        result.out.name,
        result.format,
        counts,
        {s: writer.data_files(s) for s in counts},
        writer.card_features(schema),
        fields_of(writer.fields(schema)),
        [run for run in runs if run.exported],
        spec,
        split_seed,
        caption_extension,
    )
    result.splits = {s: n for s, (n, _) in counts.items()}
    result.samples = sum(result.splits.values())


def _select(root: Path, where: str | None, run_id: str | None, kept_only: bool, dedup: bool) -> list[dict]:
    """The rows with an image file matching ``where``, ``run_id``, ``kept_only`` and not marked
    duplicates if ``dedup``, in catalog
    order, as Python values straight from Arrow (pandas would turn an int64 column with nulls,
    such as ``seed`` beside external images, into floats that lose digits)."""
    conditions = ["image_path IS NOT NULL"]
    if kept_only:  # a reviewer's decision where there is one, else the policy's
        conditions.append("kept_final")
    if dedup:
        conditions.append("dedup_kept IS NOT FALSE")
    return rows_where(root, *conditions, where=where, run_id=run_id).to_pylist()


def _read_checked(root: Path, row: dict, result: ExportResult) -> bytes | None:
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
