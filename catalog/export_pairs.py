"""``winnow export --format pairs``: chosen/rejected image pairs of the same prompt, for
preference training (Diffusion-DPO).

The layout is the one diffusers' ``examples/research_projects/diffusion_dpo/
train_diffusion_dpo.py`` reads (the Pick-a-Pic layout): Parquet shards
``<out>/data/<split>-NNNNN-of-NNNNN.parquet`` (a new shard after ``shard_mb`` MB of images)
with the columns ``caption`` (the prompt), ``jpg_0`` and ``jpg_1`` (the two images' file bytes,
PNG as generated), ``label_0`` (1.0 when ``jpg_0`` is the preferred image, 0.0 when ``jpg_1``
is), then ``split``, ``run_id``, ``prompt_id``, ``candidate_id_0``, ``candidate_id_1`` and
``source`` (``human`` or ``policy``). ``datasets.load_dataset(out)`` reads it through the card.

Pairs are made within one prompt of one run. Where a reviewer decided on any candidate of the
prompt (``winnow review``), preferred = ``kept_final`` true and rejected = ``kept_final``
false (the reviewer's decision, else the policy's, candidate by candidate); otherwise preferred
= kept by the policy and rejected = not kept. A better rank against a worse one among the
rejected is not used: below the kept set the policy's order is the weakest signal. Each
preferred candidate (best rank first) is paired with each rejected one (worst rank first), in
order of the two positions' sum, so the first pairs spread over both sides and have the widest
gaps; at most ``pairs_per_prompt`` per prompt. Which side is ``jpg_0`` is a stable hash of the
pair, so ``label_0`` is 1.0 for about half of the pairs.

A rejected candidate has an image file only when its run had ``run.save_rejected: true``;
without it no pair can be built, and the export says so.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from itertools import groupby, product
from pathlib import Path

import pyarrow as pa

from winnow.catalog.card import run_infos
from winnow.catalog.export import ExportResult, _read_checked, finish, staged
from winnow.catalog.export_formats import writer as make_writer
from winnow.catalog.query import CatalogError, rows_where
from winnow.catalog.splits import TRAIN, parse_splits, split_of

SCHEMA = pa.schema(
    [
        pa.field("caption", pa.string()),
        pa.field("jpg_0", pa.binary()),
        pa.field("jpg_1", pa.binary()),
        pa.field("label_0", pa.float64()),
        pa.field("split", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("candidate_id_0", pa.string()),
        pa.field("candidate_id_1", pa.string()),
        pa.field("source", pa.string()),
    ]
)


def export_pairs(
    root: str | Path,
    out: str | Path,
    where: str | None = None,
    run_id: str | None = None,
    *,
    split: str | None = None,
    split_seed: int = 0,
    shard_mb: float = 500,
    pairs_per_prompt: int = 16,
    dedup: bool = False,
) -> ExportResult:
    """Write the preference pairs of the catalog at ``root`` (rows matching ``where`` and
    ``run_id``, not dedup's duplicates if ``dedup``) into ``out`` (absent or empty), at most
    ``pairs_per_prompt`` per prompt; ``split``/``split_seed`` as for the other formats. The
    result counts pairs as samples."""
    if pairs_per_prompt < 1:
        raise CatalogError("--pairs-per-prompt must be at least 1")
    spec = parse_splits(split)
    root, out = Path(root), Path(out)
    groups, unsaved = _pairs(_rows(root, where, run_id, dedup), pairs_per_prompt)
    if not groups:
        if unsaved:
            raise CatalogError(
                f"no preference pair can be built: the rejected candidates of {unsaved} prompt(s) have no "
                "image file (rerun with run.save_rejected: true to keep them)"
            )
        raise CatalogError(
            "no preference pair can be built: no prompt has both a preferred and a rejected image"
        )
    rows = [row for group in groups for pair in group for row in pair[:2]]
    runs = run_infos(root, rows)  # reads the manifests first: a broken one stops before any write

    result = ExportResult("pairs", out)
    with staged(result) as tmp:
        writer = make_writer("pairs", tmp, SCHEMA, 1, shard_mb, "", ".txt")
        by_split = defaultdict(list)
        for group in groups:
            by_split[split_of(group[0][0]["prompt_id"], spec, split_seed)].append(group)
        exported: dict[str, list[dict]] = defaultdict(list)  # split -> preferred row of each pair
        for split_name in [TRAIN, *spec]:
            for group in by_split[split_name]:
                images: dict[str, bytes | None] = {}
                for chosen, rejected, source in group:
                    data = [_image(root, row, images, result) for row in (chosen, rejected)]
                    if None in data:
                        continue
                    values = _record(chosen, rejected, data[0], data[1], source, split_name)
                    writer.add(split_name, chosen, data[0] + data[1], values)
                    exported[split_name].append(chosen)
        writer.close()
        if not exported:
            raise CatalogError(
                "no preference pair could be exported: every pair has a missing or changed image"
            )
        finish(result, tmp, writer, SCHEMA, exported, runs, spec, split_seed)
    return result


def _rows(root: Path, where: str | None, run_id: str | None, dedup: bool) -> list[dict]:
    """Every candidate (with an image file or not) matching the filters, grouped by run and
    prompt, best rank first."""
    conditions = ["dedup_kept IS NOT FALSE"] if dedup else []
    order = "run_id, prompt_id, rank, candidate_index"
    return rows_where(root, *conditions, where=where, run_id=run_id, order=order).to_pylist()


def _pairs(rows: list[dict], cap: int) -> tuple[list[list[tuple[dict, dict, str]]], int]:
    """The pairs (preferred row, rejected row, source) of each prompt that has any, and the
    number of prompts whose only missing side is rejected images that were not saved."""
    groups, unsaved = [], 0
    for _, group in groupby(rows, key=lambda r: (r["run_id"], r["prompt_id"])):
        group = list(group)  # best rank first
        human = any(r["human_decision"] is not None for r in group)
        preferred = [r for r in group if (r["kept_final"] if human else r["kept"])]
        rejected = [r for r in group if not (r["kept_final"] if human else r["kept"])][::-1]  # worst first
        with_image = [r for r in rejected if r["image_path"] is not None]
        preferred = [r for r in preferred if r["image_path"] is not None]
        if preferred and rejected and not with_image:
            unsaved += 1
        if not preferred or not with_image:
            continue
        order = sorted(
            product(range(len(preferred)), range(len(with_image))), key=lambda ij: (sum(ij), ij[0])
        )
        source = "human" if human else "policy"
        groups.append([(preferred[i], with_image[j], source) for i, j in order[:cap]])
    return groups, unsaved


def _image(root: Path, row: dict, cache: dict[str, bytes | None], result: ExportResult) -> bytes | None:
    """``row``'s checked image bytes, read once per export of its prompt."""
    if row["candidate_id"] not in cache:
        cache[row["candidate_id"]] = _read_checked(root, row, result)
    return cache[row["candidate_id"]]


def _record(
    chosen: dict, rejected: dict, chosen_data: bytes, rejected_data: bytes, source: str, split: str
) -> dict:
    """One pair's row; the preferred image is ``jpg_0`` or ``jpg_1`` by a stable hash of the pair."""
    key = f"{chosen['run_id']}:{chosen['candidate_id']}:{rejected['candidate_id']}".encode()
    swap = hashlib.sha256(key).digest()[0] & 1
    first, second = (rejected, chosen) if swap else (chosen, rejected)
    return {
        "caption": chosen["prompt"],
        "jpg_0": rejected_data if swap else chosen_data,
        "jpg_1": chosen_data if swap else rejected_data,
        "label_0": 0.0 if swap else 1.0,
        "split": split,
        "run_id": chosen["run_id"],
        "prompt_id": chosen["prompt_id"],
        "candidate_id_0": first["candidate_id"],
        "candidate_id_1": second["candidate_id"],
        "source": source,
    }
