"""Export catalog rows with an image file as a training set, with a dataset card.

Formats (the consumer each is made for), one folder or file group per split (``train``, and
those ``split`` asks for, by prompt: ``winnow.catalog.splits``):

- ``imagefolder``: ``<out>/<split>/<name>.png`` + ``<out>/<split>/metadata.jsonl``
  (``file_name`` and the sample's fields) for ``datasets.load_dataset(out)`` / ``"imagefolder"``
  and the diffusers text-to-image scripts (``--caption_column text``).
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

The fields are the full catalog row plus the caption, split and image size
(``winnow.catalog.export_fields``); ``<out>/README.md`` is the dataset card
(``winnow.catalog.card``). File names come from ids (``<run_id>_<candidate_id>``), never from
prompt text. Only rows with an image file can be exported: kept rows, and rejected ones where
the run saved them (``run.save_rejected``). Every image is checked against its recorded
sha256 as it is copied; a missing or changed file is skipped and reported, never exported.
The export is written into a hidden folder beside ``out`` and renamed into place at the end,
so a failed export leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.catalog.card import fields_of, run_infos, write_card
from winnow.catalog.export_fields import (
    card_features,
    hf_features,
    json_safe,
    json_types,
    parse_buckets,
    record,
    record_schema,
)
from winnow.catalog.query import VIEW, CatalogError, query, score_columns
from winnow.catalog.splits import TRAIN, parse_splits, split_of

FORMATS: tuple[str, ...] = ("imagefolder", "webdataset", "parquet", "kohya")
CAPTION_EXTENSIONS = (".txt", ".caption")
ROW_GROUP = 100  # Parquet rows per row group: small groups let the hub viewer page through images
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


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


def sample_name(row: dict) -> str:
    """``<run_id>_<candidate_id>``: unique in a catalog (candidate ids contain no ``_``)."""
    return f"{row['run_id']}_{row['candidate_id']}"


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
) -> ExportResult:
    """Export the rows of the catalog at ``root`` matching ``where`` (SQL over the view
    ``catalog``), ``run_id`` and ``kept_only`` that have an image, as ``fmt`` into ``out``
    (created; must be absent or empty). ``split``: ``NAME=FRACTION,...`` by prompt, hashed with
    ``split_seed``; ``shard_size``: samples per tar (webdataset); ``shard_mb``: MB of images
    per Parquet shard; ``repeats``, ``name`` and ``caption_extension``: the kohya folder
    ``<repeats>_<name>`` and its captions; ``buckets``: ``WxH,...`` sizes whose nearest aspect
    ratio each sample records."""
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
    rows = _select(root, where, run_id, kept_only)
    if not rows:
        raise CatalogError("no catalog rows with an image file match: nothing to export")
    by_split: dict[str, list[dict]] = {s: [] for s in (TRAIN, *spec)}  # train first, then the spec's order
    for row in rows:
        by_split[split_of(row["prompt_id"], spec, split_seed)].append(row)
    runs = run_infos(root, rows)  # reads the manifests first: a broken one stops before any write
    schema = record_schema(score_columns(list(rows[0])), bool(bucket_list))

    result = ExportResult(fmt, out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        writer = _writer(fmt, tmp, schema, shard_size, shard_mb, f"{repeats}_{name}", caption_extension)
        exported: dict[str, list[dict]] = defaultdict(list)
        for split_name, split_rows in by_split.items():
            for row in split_rows:
                data = _read_checked(root, row, result)
                if data is not None:
                    writer.add(split_name, row, data, record(row, split_name, data, schema, bucket_list))
                    exported[split_name].append(row)
        writer.close()
        counts = {s: (len(r), len({row["prompt_id"] for row in r})) for s, r in exported.items()}
        per_run = Counter(row["run_id"] for r in exported.values() for row in r)
        for run in runs:
            run.exported = per_run[run.run_id]
        write_card(
            tmp,
            out.name,
            fmt,
            counts,
            {s: writer.data_files(s) for s in counts},
            writer.card_features(schema),
            fields_of(writer.fields(schema)),
            [run for run in runs if run.exported],
            spec,
            split_seed,
            caption_extension,
        )
        os.replace(tmp, out)  # out is absent or an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.splits = {s: n for s, (n, _) in counts.items()}
    result.samples = sum(result.splits.values())
    result.files = sorted(p for p in out.rglob("*") if p.is_file())
    result.bytes = sum(p.stat().st_size for p in result.files)
    return result


def _select(root: Path, where: str | None, run_id: str | None, kept_only: bool) -> list[dict]:
    """The rows with an image file matching ``where``, ``run_id`` and ``kept_only``, in catalog
    order, as Python values straight from Arrow (pandas would turn an int64 column with nulls,
    such as ``seed`` beside external images, into floats that lose digits)."""
    conditions = ["image_path IS NOT NULL"]
    if where:
        conditions.append(f"({where})")
    if kept_only:
        conditions.append("kept")
    if run_id:
        conditions.append(f"run_id = '{run_id.replace(chr(39), chr(39) * 2)}'")
    order = "ORDER BY run_id, shard_id, prompt_id, candidate_index"
    return query(root, f"SELECT * FROM {VIEW} WHERE {' AND '.join(conditions)} {order}").to_pylist()


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


def _suffix(row: dict) -> str:
    return Path(row["image_path"]).suffix.lower() or ".png"


def _writer(fmt, out, schema, shard_size, shard_mb, subset, caption_extension) -> _Writer:
    if fmt == "imagefolder":
        return _ImageFolder(out)
    if fmt == "webdataset":
        return _WebDataset(out, shard_size)
    if fmt == "parquet":
        return _Parquet(out, schema, int(shard_mb * 1e6))
    return _Kohya(out, subset, caption_extension)


class _Writer:
    """One format's files: ``add`` each sample (split by split), then ``close``."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def add(self, split: str, row: dict, data: bytes, values: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the files (nothing to do for formats that write each sample as it comes)."""

    def data_files(self, split: str) -> str:
        """The card's glob (under ``out``) of ``split``'s files."""
        return f"{split}/**"

    def metadata(self, schema: pa.Schema) -> pa.Schema:
        """The fields' types as the consumer reads them back (JSON's, by default)."""
        return json_types(schema)

    def fields(self, schema: pa.Schema) -> list[pa.Field]:
        """A sample's fields as the consumer sees them: the image, then the metadata."""
        return [pa.field("image", IMAGE_STRUCT), *self.metadata(schema)]

    def card_features(self, schema: pa.Schema) -> list[dict] | None:
        """The card's ``dataset_info`` features, or None where ``datasets`` should infer them."""
        return [{"name": "image", "dtype": "image"}, *card_features(self.metadata(schema))]


class _ImageFolder(_Writer):
    def __init__(self, out: Path) -> None:
        super().__init__(out)
        self.lines: dict[str, list[str]] = defaultdict(list)

    def add(self, split, row, data, values):
        (self.out / split).mkdir(exist_ok=True)
        file_name = sample_name(row) + _suffix(row)
        (self.out / split / file_name).write_bytes(data)
        self.lines[split].append(
            json.dumps({"file_name": file_name, **json_safe(values)}, ensure_ascii=False)
        )

    def close(self):
        for split, lines in self.lines.items():
            (self.out / split / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


class _WebDataset(_Writer):
    def __init__(self, out: Path, shard_size: int) -> None:
        super().__init__(out)
        self.shard_size = shard_size
        self.tar: tarfile.TarFile | None = None
        self.counts: dict[str, int] = defaultdict(int)  # samples written per split
        self.suffixes: set[str] = set()

    def add(self, split, row, data, values):
        number, position = divmod(self.counts[split], self.shard_size)
        if position == 0:
            self._close_tar()
            path = self.out / f"{split}-{number:06d}.tar"
            self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed by close)
        key = f"{row['run_id']}/{row['candidate_id']}"
        self.suffixes.add(_suffix(row))
        meta = json.dumps(json_safe(values), ensure_ascii=False, sort_keys=True).encode()
        for member, payload in (
            (key + _suffix(row), data),
            (f"{key}.txt", values["text"].encode()),
            (f"{key}.json", meta),
        ):
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(payload), 0o644, 0  # reproducible tars
            self.tar.addfile(info, io.BytesIO(payload))
        self.counts[split] += 1

    def _close_tar(self):
        if self.tar is not None:
            self.tar.close()
            self.tar = None

    def close(self):
        self._close_tar()

    def data_files(self, split):
        return f"{split}-*.tar"

    def fields(self, schema):
        return [pa.field("image", IMAGE_STRUCT), pa.field("text", pa.string()), *self.metadata(schema)]

    def card_features(self, schema):
        """datasets' webdataset builder: a column per member suffix (``png``, ``txt``,
        ``json``: a struct of the fields), then ``__key__`` and ``__url__``."""
        images = [{"name": s.removeprefix("."), "dtype": "image"} for s in sorted(self.suffixes)]
        json_struct = {"name": "json", "struct": card_features(self.metadata(schema))}
        text = {"name": "txt", "dtype": "string"}
        keys = [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
        return [*images, text, json_struct, *keys]


class _Parquet(_Writer):
    def __init__(self, out: Path, schema: pa.Schema, shard_bytes: int) -> None:
        super().__init__(out)
        # datasets reads the features from the schema's metadata: the image struct is an Image
        features = {"info": {"features": hf_features(pa.schema(self.fields(schema)))}}
        self.schema = pa.schema(self.fields(schema), metadata={"huggingface": json.dumps(features)})
        self.shard_bytes = shard_bytes
        self.shards: dict[str, list[Path]] = defaultdict(list)
        self.writer: pq.ParquetWriter | None = None
        self.batch: list[dict] = []
        self.split: str | None = None  # of the open shard
        self.size = 0  # image bytes in the open shard

    def add(self, split, row, data, values):
        if self.writer is None or self.size >= self.shard_bytes or split != self.split:
            self._close_shard()
            path = self.out / "data" / f"{split}-{len(self.shards[split]):05d}.parquet"
            path.parent.mkdir(exist_ok=True)
            self.shards[split].append(path)
            self.writer, self.split, self.size = pq.ParquetWriter(path, self.schema), split, 0
        self.batch.append({"image": {"bytes": data, "path": sample_name(row) + _suffix(row)}, **values})
        self.size += len(data)
        if len(self.batch) == ROW_GROUP:
            self._flush()

    def _flush(self):
        if self.batch:
            self.writer.write_table(pa.Table.from_pylist(self.batch, schema=self.schema))
            self.batch = []

    def _close_shard(self):
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None

    def close(self):
        self._close_shard()
        for paths in self.shards.values():  # now that each split's shard count is known
            for path in paths:
                path.rename(path.with_name(f"{path.stem}-of-{len(paths):05d}.parquet"))

    def data_files(self, split):
        return f"data/{split}-*.parquet"

    def metadata(self, schema):
        return schema  # Parquet keeps the catalog's types


class _Kohya(_Writer):
    def __init__(self, out: Path, subset: str, caption_extension: str) -> None:
        super().__init__(out)
        self.subset, self.caption_extension = subset, caption_extension

    def add(self, split, row, data, values):
        folder = self.out / split / self.subset
        folder.mkdir(parents=True, exist_ok=True)
        stem = sample_name(row)
        (folder / (stem + _suffix(row))).write_bytes(data)
        (folder / (stem + self.caption_extension)).write_text(values["text"], encoding="utf-8")

    def fields(self, schema):
        return [pa.field("image", IMAGE_STRUCT), pa.field("text", pa.string())]

    def card_features(self, schema):
        return None  # images and captions only: datasets' imagefolder reads the images
