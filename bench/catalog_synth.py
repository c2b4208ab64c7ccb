"""Build a synthetic catalog of N rows in winnow's own schema and layout, for the catalog-at-scale
bench (``bench/catalog_scale.py``, ``bench/catalog_delta.py``).

    python -m bench.catalog_synth --rows 10000000 --out /work/bench-data/synth-10m

What it writes, as ``winnow run`` would lay it out (``winnow.catalog.writer.part_path``):

- ``runs/<run>/shard-<id>.parquet``: 20 runs (``--runs``), parts of 512 rows (64 prompts x 8
  candidates; ``--part-rows``), the last part of a run shorter; schema from
  ``winnow.catalog.schema.schema`` with the demo's scorers (``clip_score``, ``aesthetic``),
  zstd-compressed as ``winnow.catalog.writer.write_part`` does (written without its fsync);
- ``runs/<run>/_manifest.json``: a run manifest for ``bundled:shapes-sd`` (the demo config's
  generator, every setting resolved), so ``winnow regenerate CATALOG ID`` rebuilds the generator
  and reruns a synthetic row's pipeline call end to end.

Rows: distinct prompts (~60 characters: a shapes caption and two words, one per prompt over the
whole catalog, ``prompt_id`` as winnow hashes it), 8 candidates each, CLIP and aesthetic scores
drawn per prompt and candidate, the combined score as the demo's policy makes it (z-scores
within the prompt, weights 1.0 and 0.5), rank, kept = the top 2, ``not_top_k`` for the rest,
``image_path``/``image_sha256`` on kept rows only (``save_rejected: false``), a seed per
candidate, pipeline calls of 32. No image files and no stored embeddings are written: the
bench times the table, not the images. The same ``--seed`` gives the same rows (``created_at``
too: it is synthetic, not the clock).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from winnow.catalog.manifest import Manifest, generated_manifest
from winnow.catalog.schema import SCHEMA_VERSION, VERSIONS, schema
from winnow.catalog.writer import part_path
from winnow.pipeline.config import Config
from winnow.pipeline.prompts import prompt_id

CANDIDATES = 8
KEEP = 2
CALL = 32  # candidates per pipeline call (the demo's batch_size)
SCORERS = ("aesthetic", "clip_score")
WEIGHTS = {"clip_score": 1.0, "aesthetic": 0.5}
START = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)  # run k starts k nights later
_REPO = Path(__file__).resolve().parents[1]

_COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
_SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
_BACKGROUNDS = ("white", "gray", "black", "blue", "green", "sand")
# fmt: off
_WORDS = (
    "misty", "morning", "lantern", "harbor", "velvet", "canyon", "quiet", "meadow", "copper", "river",
    "amber", "glacier", "silver", "forest", "paper", "garden", "marble", "tower", "crimson", "valley",
    "golden", "island", "hollow", "bridge", "frozen", "desert", "painted", "market", "distant",
    "temple", "gentle", "storm", "rusty", "engine", "broken", "mirror", "wooden", "cabin", "neon",
    "street", "ancient", "library", "floating", "castle", "hidden", "waterfall", "sleepy", "village",
    "bright", "comet", "stormy", "ocean", "lonely", "lighthouse", "dusty", "road", "silent",
    "cathedral", "wild", "orchard", "cosmic", "nebula", "crystal", "cave", "tiny", "robot", "giant",
    "whale", "soft", "watercolor", "sharp", "ink", "bold", "poster", "faded", "photo", "vintage",
    "film", "macro", "lens", "wide", "angle", "low", "poly", "pixel", "art", "oil", "pastel",
    "charcoal", "sketch", "clay",
)
# fmt: on


def prompt_text(g: int) -> str:
    """Prompt number ``g`` of the synthetic world: a shapes caption and two words, distinct for
    every ``g`` below ``len(captions) * len(_WORDS) ** 2`` (about 8.8M)."""
    c, rest = divmod(g, len(_WORDS) ** 2)
    colour, shape, background = (
        _COLOURS[c % len(_COLOURS)],
        _SHAPES[c // len(_COLOURS) % len(_SHAPES)],
        _BACKGROUNDS[c // (len(_COLOURS) * len(_SHAPES)) % len(_BACKGROUNDS)],
    )
    if c >= len(_COLOURS) * len(_SHAPES) * len(_BACKGROUNDS):
        raise ValueError(f"prompt {g} is past the synthetic world's distinct prompts")
    first, second = divmod(rest, len(_WORDS))
    return f"a {colour} {shape} on a {background} background, {_WORDS[first]} {_WORDS[second]} style, 4k"


def _hex(raw: np.ndarray) -> pa.Array:
    """(n, k) uint8 -> n strings of 2k hex characters, without a Python loop."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = np.stack([digits[raw >> 4], digits[raw & 15]], axis=-1).reshape(len(raw), -1)
    width = chars.shape[1]
    offsets = pa.py_buffer((np.arange(len(raw) + 1, dtype=np.int32) * width).tobytes())
    return pa.Array.from_buffers(pa.string(), len(raw), [None, offsets, pa.py_buffer(chars.tobytes())])


def run_table(run_id: str, first_prompt: int, prompts: int, part_rows: int, rng: np.random.Generator,
              started: datetime, fingerprint: str, config_hash: str) -> pa.Table:  # fmt: skip
    """All rows of one run (``prompts`` prompts from ``first_prompt`` on), in part order."""
    n = prompts * CANDIDATES
    texts = [prompt_text(first_prompt + p) for p in range(prompts)]
    ids = pa.array([prompt_id(t, "") for t in texts])
    per_prompt = np.repeat(np.arange(prompts), CANDIDATES)
    index = np.tile(np.arange(CANDIDATES, dtype=np.int32), prompts)
    prompt_ids = ids.take(per_prompt)
    candidate_ids = pc.binary_join_element_wise(
        prompt_ids, pa.array([f"{i:03d}" for i in range(CANDIDATES)]).take(index), "-"
    )
    # Scores: a prompt's level plus each candidate's spread (CLIP score x100, aesthetic 0-10).
    clip = rng.normal(75, 4, (prompts, 1)) + rng.normal(0, 3, (prompts, CANDIDATES))
    aesthetic = np.clip(rng.normal(6.5, 0.8, (prompts, 1)) + rng.normal(0, 0.7, (prompts, CANDIDATES)), 0, 10)

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)

    combined = WEIGHTS["clip_score"] * z(clip) + WEIGHTS["aesthetic"] * z(aesthetic)
    order = np.argsort(-combined, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, CANDIDATES + 1), axis=1)
    rank = rank.reshape(-1).astype(np.int32)
    kept = pa.array(rank <= KEEP)
    null = pa.nulls(n, pa.string())
    paths = pc.binary_join_element_wise(f"images/{run_id}/", candidate_ids, ".png", "")
    # Parts hold part_rows rows: shard id, call and position restart in every part.
    position = np.arange(n) % part_rows
    part = np.arange(n) // part_rows
    parts = int(part[-1]) + 1
    shard_ids = pa.array([f"{k:05d}" for k in range(parts)]).take(part)
    calls = (position // CALL).astype(np.int32)
    call_seconds = rng.gamma(4.0, 0.05, parts * (part_rows // CALL + 1))
    written = np.datetime64(started.replace(tzinfo=None), "us") + (
        (part + 1) * 30_000_000 + rng.integers(0, 1_000_000, parts)[part]
    ).astype("timedelta64[us]")
    constant = {
        "model": "bundled:shapes-sd",
        "model_fingerprint": fingerprint,
        "pipeline": "StableDiffusionPipeline",
        "scheduler": "DPMSolverMultistepScheduler",
        "dtype": "float32",
        "device": "cpu",
        "config_hash": config_hash,
        "versions": VERSIONS,
        "run_id": run_id,
        "source": "generated",
        "negative_prompt": "",
        "prompt_meta": "{}",
    }
    data = {name: pa.array([value] * n, pa.string()) for name, value in constant.items()}
    data |= {
        "schema_version": pa.array(np.full(n, SCHEMA_VERSION, np.int16)),
        "shard_id": shard_ids,
        "prompt_id": prompt_ids,
        "candidate_id": candidate_ids,
        "candidate_index": pa.array(index),
        "round": pa.array(np.zeros(n, np.int16)),
        "prompt": pa.array(texts).take(per_prompt),
        "seed": pa.array(rng.integers(0, 2**63 - 1, n, dtype=np.int64)),
        "batch_index": pa.array(calls),
        "batch_position": pa.array((position % CALL).astype(np.int32)),
        "batch_size": pa.array(np.full(n, CALL, np.int32)),
        "steps": pa.array(np.full(n, 20, np.int32)),
        "guidance": pa.array(np.full(n, 1.5, np.float32)),
        "width": pa.array(np.full(n, 32, np.int32)),
        "height": pa.array(np.full(n, 32, np.int32)),
        "safety_flagged": pa.nulls(n, pa.bool_()),
        "combined_score": pa.array(combined.reshape(-1)),
        "rank": pa.array(rank),
        "kept": kept,
        "reject_reason": pc.if_else(kept, null, pa.scalar("not_top_k")),
        "image_path": pc.if_else(kept, paths, null),
        "image_sha256": pc.if_else(kept, _hex(rng.integers(0, 256, (n, 32), dtype=np.uint8)), null),
        "generation_seconds": pa.array(call_seconds[part * (part_rows // CALL + 1) + calls]),
        "scoring_seconds": pa.array(rng.gamma(4.0, 0.0005, n)),
        "created_at": pa.array(written, pa.timestamp("us", tz="UTC")),
        "score_aesthetic": pa.array(aesthetic.reshape(-1)),
        "score_clip_score": pa.array(clip.reshape(-1)),
    }
    target = schema(SCORERS)
    return pa.table([data[f.name].cast(f.type) for f in target], schema=target)


def _config(run_id: str, out: Path, seed: int, part_rows: int) -> Config:
    """The demo config's run (bundled shapes models, 20 steps, guidance 1.5, calls of 32, keep 2
    of 8) with parts of ``part_rows`` rows and no stored embeddings."""
    return Config.model_validate(
        {
            "prompts": {
                "path": str(_REPO / "configs" / "prompts" / "shapes.txt")
            },  # replaced in the manifest
            "generator": {
                "model": "bundled:shapes-sd",
                "steps": 20,
                "guidance": 1.5,
                "batch_size": CALL,
                "device": "cpu",
            },
            "clip": {"shapes": {"model": "bundled:shapes-clip"}},
            "scorers": {
                "clip_score": {"clip": "shapes"},
                "aesthetic": {"clip": "shapes", "head": "bundled:shapes-aesthetic"},
            },
            "select": {"keep": KEEP, "weights": WEIGHTS},
            "run": {
                "out": str(out),
                "run_id": run_id,
                "seed": seed,
                "candidates": CANDIDATES,
                "shard_size": part_rows // CANDIDATES,
                "save_rejected": False,
                "embeddings": "none",
            },
        }
    )


def manifest(config: Config, run_id: str, prompts: int, started: datetime) -> Manifest:
    """The run's manifest as ``winnow run`` writes it; the prompt source is the synthetic world
    (no file), the time is the run's synthetic start."""
    made = generated_manifest(config, run_id, prompts)
    source = made.prompts.model_copy(update={"file": None, "sha256": None})
    return made.model_copy(update={"prompts": source, "created_at": started})


def build(out: Path, rows: int, runs: int, part_rows: int, seed: int) -> dict:
    """Write the catalog; return what was written (rows, parts, runs, bytes, seconds)."""
    if part_rows % CANDIDATES:
        raise SystemExit(f"--part-rows must be a multiple of {CANDIDATES}")
    if (out / "runs").exists():
        raise SystemExit(f"{out}/runs exists: pick an empty folder")
    prompts = rows // CANDIDATES
    per_run = [prompts // runs + (r < prompts % runs) for r in range(runs)]
    rng = np.random.default_rng(seed)
    start, first, parts, size = time.perf_counter(), 0, 0, 0
    for r, count in enumerate(per_run):
        run_id = f"night-{r:03d}"
        started = START + timedelta(days=r)
        config = _config(run_id, out, seed + r, part_rows)
        made = manifest(config, run_id, count, started)
        folder = out / "runs" / run_id
        folder.mkdir(parents=True)
        (folder / "_manifest.json").write_text(made.model_dump_json(indent=2))
        fingerprint = made.models["generator.model"].fingerprint
        table = run_table(run_id, first, count, part_rows, rng, started, fingerprint, made.config_hash)
        for k, offset in enumerate(range(0, table.num_rows, part_rows)):
            path = part_path(out, run_id, f"{k:05d}")
            pq.write_table(table.slice(offset, part_rows), path, compression="zstd")
            size += path.stat().st_size
            parts += 1
        first += count
        print(
            f"{run_id}: {table.num_rows:,} rows, {k + 1} parts ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    info = {
        "rows": prompts * CANDIDATES,
        "prompts": prompts,
        "runs": runs,
        "parts": parts,
        "part_rows": part_rows,
        "bytes": size,
        "seed": seed,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True, help="rows (candidates); prompts = rows / 8")
    parser.add_argument("--out", type=Path, required=True, help="catalog folder to create")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--part-rows", type=int, default=512, help="rows per Parquet part")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(build(args.out, args.rows, args.runs, args.part_rows, args.seed), indent=2))


if __name__ == "__main__":
    main()
