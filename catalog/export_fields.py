"""The fields of an exported sample: the full catalog row, plus what a trainer needs.

Every column of the catalog's row contract (``winnow.catalog.schema.COLUMNS``, in order) and
every ``score_<scorer>`` column is exported, so an exported image can be traced and
regenerated (model and fingerprint, pipeline, scheduler, steps, guidance, dtype, seed,
prompt_meta, created_at, versions, ...). In front: ``text`` (the prompt, the caption column
of the diffusers training scripts) and ``split``. After: the image's own size for
SDXL-style bucketed training (``original_width``, ``original_height``, ``aspect_ratio``) and,
when a bucket list is given, the bucket it falls in (``bucket_width``, ``bucket_height``).

The same Arrow schema types the Parquet export and gives the ``datasets`` features of the
dataset card, so the card always describes what was written.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa
from PIL import Image

from winnow.catalog.query import CatalogError
from winnow.catalog.schema import COLUMNS

Bucket = tuple[int, int]  # (width, height) in pixels
SIZE_FIELDS = (
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("aspect_ratio", pa.float64()),
)
BUCKET_FIELDS = (("bucket_width", pa.int32()), ("bucket_height", pa.int32()))
# Arrow type names that datasets spells differently
_DTYPES = {"float": "float32", "double": "float64", "halffloat": "float16"}


def record_schema(scores: Sequence[str], buckets: bool) -> pa.Schema:
    """The exported fields in order: text, split, the catalog columns, ``scores`` (the
    ``score_*`` columns), the image size and, if ``buckets``, the bucket."""
    fields = [pa.field("text", pa.string()), pa.field("split", pa.string())]
    fields += [pa.field(c.name, c.type) for c in COLUMNS]
    fields += [pa.field(s, pa.float64()) for s in scores]
    fields += [pa.field(n, t) for n, t in SIZE_FIELDS + (BUCKET_FIELDS if buckets else ())]
    return pa.schema(fields)


def parse_buckets(spec: str | None) -> list[Bucket]:
    """``"1024x1024,1152x896,896x1152"`` -> ``[(1024, 1024), ...]`` (width x height, pixels)."""
    buckets = []
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        match = re.fullmatch(r"\s*([1-9]\d*)\s*[xX]\s*([1-9]\d*)\s*", item)
        if match is None:
            raise CatalogError(f"bucket {item.strip()!r}: expected WIDTHxHEIGHT in pixels, e.g. 1024x1024")
        buckets.append((int(match[1]), int(match[2])))
    return buckets


def nearest_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to ``width / height`` (in log ratio, so 2:1 and
    1:2 are equally far from 1:1); the first listed on a tie."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - ratio))


def record(row: dict, split: str, data: bytes, schema: pa.Schema, buckets: Sequence[Bucket]) -> dict:
    """One sample's fields (``schema`` from ``record_schema``) as Python values: the catalog
    ``row``'s values as stored (a column the row's part lacks is None), the size read from the
    image bytes."""
    width, height = Image.open(io.BytesIO(data)).size  # reads the header only
    values: dict = {"text": row["prompt"], "split": split}
    values |= {name: row.get(name) for name in schema.names if name not in values}
    values |= {"original_width": width, "original_height": height, "aspect_ratio": round(width / height, 4)}
    if buckets:
        values["bucket_width"], values["bucket_height"] = nearest_bucket(width, height, buckets)
    return values


def json_safe(values: dict) -> dict:
    """``values`` for JSON: timestamps as ISO 8601 strings, non-finite floats (an unscorable
    row's ``-inf`` combined score) as null."""
    out = {}
    for name, value in values.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        out[name] = value
    return out


def json_types(schema: pa.Schema) -> pa.Schema:
    """``schema`` as ``datasets`` reads the fields back from JSON (``metadata.jsonl``, a
    webdataset ``.json``): integers int64, floats float64, timestamps ISO 8601 strings."""

    def as_json(type_: pa.DataType) -> pa.DataType:
        if pa.types.is_integer(type_):
            return pa.int64()
        if pa.types.is_floating(type_):
            return pa.float64()
        return pa.string() if pa.types.is_timestamp(type_) else type_

    return pa.schema([pa.field(f.name, as_json(f.type)) for f in schema])


def dtype(type_: pa.DataType) -> str:
    """The ``datasets`` ``Value`` dtype of an Arrow type (``float64``, ``timestamp[us, tz=UTC]``)."""
    return _DTYPES.get(str(type_), str(type_))


def card_features(schema: pa.Schema) -> list[dict]:
    """``schema``'s fields as a dataset card's ``dataset_info.features`` list."""
    return [{"name": f.name, "dtype": dtype(f.type)} for f in schema]


def hf_features(schema: pa.Schema) -> dict:
    """``schema``'s fields as ``datasets`` serializes ``Features`` (the Parquet schema's
    ``huggingface`` metadata), an ``image`` struct field as an ``Image`` feature."""
    features = {}
    for f in schema:
        if f.name == "image":
            features[f.name] = {"_type": "Image"}
        else:
            features[f.name] = {"dtype": dtype(f.type), "_type": "Value"}
    return features
