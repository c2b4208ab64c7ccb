"""The files of each export format: one writer per format, fed sample by sample, split by
split, that also names its files for the dataset card and says how ``datasets`` reads them.
The layouts are described in ``winnow.catalog.export``."""

from __future__ import annotations

import io
import json
import tarfile
from abc import ABC, abstractmethod
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.catalog.export_fields import card_features, hf_features, json_safe, json_types

ROW_GROUP = 100  # Parquet rows per row group: small groups let the hub viewer page through images
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def sample_name(row: dict) -> str:
    """``<run_id>_<candidate_id>``: unique in a catalog (candidate ids contain no ``_``)."""
    return f"{row['run_id']}_{row['candidate_id']}"


def image_suffix(row: dict) -> str:
    """The image file's suffix (``.png``; an external image keeps its own), lowercase."""
    return Path(row["image_path"]).suffix.lower() or ".png"


def writer(
    fmt: str,
    out: Path,
    schema: pa.Schema,
    shard_size: int,
    shard_mb: float,
    subset: str,
    caption_extension: str,
) -> _Writer:
    """The writer of format ``fmt`` into ``out`` (see ``winnow.catalog.export`` for the layouts)."""
    if fmt == "imagefolder":
        return _ImageFolder(out)
    if fmt == "webdataset":
        return _WebDataset(out, shard_size)
    if fmt == "parquet":
        return _Parquet(out, schema, int(shard_mb * 1e6))
    if fmt == "pairs":
        return _Pairs(out, schema, int(shard_mb * 1e6))
    return _Kohya(out, subset, caption_extension)


class _Writer(ABC):
    """One format's files: ``add`` each sample (split by split), then ``close``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.filled: set[str] = set()  # fields some sample written so far has a value for

    @abstractmethod
    def add(self, split: str, row: dict, data: bytes, values: dict) -> None:
        """Write one sample: its catalog ``row``, image ``data`` and exported field ``values``."""

    def close(self) -> None:  # noqa: B027 (a hook: most formats write each sample as it comes)
        """Finish the files (nothing to do for formats that write each sample as it comes)."""

    def data_files(self, split: str) -> str:
        """The card's glob (under ``out``) of ``split``'s files."""
        return f"{split}/**"

    def metadata(self, schema: pa.Schema) -> pa.Schema:
        """The fields' types as the consumer reads them back (JSON's, by default): a field
        that no written sample has a value for is read back as null."""
        return pa.schema([f if f.name in self.filled else f.with_type(pa.null()) for f in json_types(schema)])

    def saw(self, values: dict) -> None:
        """Note which fields of a written sample have values (see ``metadata``)."""
        self.filled.update(name for name, value in values.items() if value is not None)

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
        file_name = sample_name(row) + image_suffix(row)
        (self.out / split / file_name).write_bytes(data)
        self.saw(values)
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
        self.suffixes.add(image_suffix(row))
        self.saw(values)
        meta = json.dumps(json_safe(values), ensure_ascii=False, sort_keys=True).encode()
        for member, payload in (
            (key + image_suffix(row), data),
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
        self.batch.append(self.row(row, data, values))
        self.size += len(data)
        if len(self.batch) == ROW_GROUP:
            self._flush()

    def row(self, row: dict, data: bytes, values: dict) -> dict:
        """The Parquet row of one sample: the image struct, then the fields."""
        return {"image": {"bytes": data, "path": sample_name(row) + image_suffix(row)}, **values}

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


class _Pairs(_Parquet):
    """Preference pairs (``winnow.catalog.export_pairs``): each row's fields already hold both
    images' bytes (``jpg_0``, ``jpg_1``); ``data`` is the two together, for the shard size."""

    def row(self, row, data, values):
        return values

    def fields(self, schema):
        return list(schema)

    def card_features(self, schema):
        return card_features(schema)


class _Kohya(_Writer):
    def __init__(self, out: Path, subset: str, caption_extension: str) -> None:
        super().__init__(out)
        self.subset, self.caption_extension = subset, caption_extension

    def add(self, split, row, data, values):
        folder = self.out / split / self.subset
        folder.mkdir(parents=True, exist_ok=True)
        stem = sample_name(row)
        (folder / (stem + image_suffix(row))).write_bytes(data)
        (folder / (stem + self.caption_extension)).write_text(values["text"], encoding="utf-8")

    def fields(self, schema):
        return [pa.field("image", IMAGE_STRUCT), pa.field("text", pa.string())]

    def card_features(self, schema):
        return None  # images and captions only: datasets' imagefolder reads the images
