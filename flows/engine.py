"""The shard engine: generate a shard's candidates batch by batch, score every batch on the
device, select each prompt as soon as all its candidates are scored, and encode, hash and
write its kept images in a background thread while the next batch generates.

Only the images selection keeps (all of them with ``run.save_rejected``) are PNG-encoded, and
that CPU work overlaps the device's work on the next batch instead of following the last one.
Images stay on the device (as uint8 pixels) until selection says they are written; only those
are copied to the host, once per batch of finished prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from catalog.writer import image_relpath, write_png
from flows.config import Config
from models.generator import Generator, Request, to_pixels
from scoring.base import Candidates, Scorer, build_scorers
from scoring.select import Selection, select


@dataclass(frozen=True)
class ShardCandidates:
    """A shard's candidates, row-aligned: the ``candidates`` of each prompt are contiguous."""

    run_id: str
    candidate_ids: list[str]
    prompt_ids: list[str]
    requests: list[Request]
    candidates: int  # N, per prompt


@dataclass(frozen=True, eq=False)
class ShardOutcome:
    """Everything the catalog records per candidate, row-aligned with ``ShardCandidates``.

    ``generation_seconds``/``scoring_seconds`` are each call's wall time divided by the images
    it produced. ``oom_retries`` counts pipeline calls retried at half size.
    """

    scores: dict[str, np.ndarray]  # scorer name -> (rows,) float64, higher is better
    selection: Selection
    image_path: list[str | None]
    image_sha256: list[str | None]
    batch_index: list[int]
    batch_position: list[int]
    batch_size: list[int]
    generation_seconds: list[float]
    scoring_seconds: list[float]
    oom_retries: int
    identity: dict[str, object]


class _Selector:
    """Selects prompts as their candidates complete; the policy works within one prompt, so
    selecting prompt by prompt gives exactly what one call over the whole shard gives."""

    def __init__(self, rows: int, config: Config, prompt_ids: list[str]) -> None:
        self.policy = config.select
        self.prompt_ids = np.array(prompt_ids)
        self.combined = np.full(rows, -np.inf)
        self.rank = np.zeros(rows, dtype=np.int64)
        self.kept = np.zeros(rows, dtype=bool)
        self.reason: list[str | None] = [None] * rows
        self.done = 0  # rows [0, done) are selected

    def advance(self, scores: dict[str, np.ndarray], upto: int) -> range:
        """Select rows [done, upto) (whole prompts); return them."""
        rows = slice(self.done, upto)
        chosen = select({k: v[rows] for k, v in scores.items()}, self.prompt_ids[rows], self.policy)
        self.combined[rows], self.rank[rows], self.kept[rows] = chosen.combined, chosen.rank, chosen.kept
        self.reason[rows] = chosen.reason
        finished, self.done = range(self.done, upto), upto
        return finished

    def result(self) -> Selection:
        return Selection(self.combined, self.rank, self.kept, self.reason)


def _score(scorers: list[Scorer], images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    batch = Candidates(images, prompts)  # one CLIP embedding per batch, shared by the scorers
    return {scorer.name: scorer.score(batch) for scorer in scorers}


def run_shard(
    config: Config, shard: ShardCandidates, on_progress: Callable[[int], None] | None = None
) -> ShardOutcome:
    """Generate, score and select ``shard`` and write the images to keep under ``run.out``."""
    root = Path(config.run.out)
    rows, n = len(shard.requests), shard.candidates
    generator = Generator(config.generator)
    scorers = build_scorers(config.scorers, generator.device)
    for scorer in scorers:
        scorer.setup()
    scores = {s.name: np.full(rows, np.nan) for s in scorers}
    selector = _Selector(rows, config, shard.prompt_ids)
    pixels: dict[int, torch.Tensor] = {}  # (H, W, 3) uint8 on the device, rows not yet selected
    writes: dict[int, Future[str]] = {}
    batch_index, batch_position, batch_size = [0] * rows, [0] * rows, [0] * rows
    gen_seconds, score_seconds = [0.0] * rows, [0.0] * rows

    # One worker: zlib compression and sha256 release the GIL for most of their time, so it
    # runs beside the pipeline's Python thread; more workers would compete with torch for cores.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="winnow-write") as pool:
        for batch in generator.generate(shard.requests):
            span = range(batch.start, batch.start + len(batch.images))
            began = time.perf_counter()
            batch_scores = _score(scorers, batch.images, [shard.requests[i].prompt for i in span])
            score_time = time.perf_counter() - began
            for name, values in batch_scores.items():
                scores[name][span.start : span.stop] = values.double().numpy()
            for i, image in zip(span, to_pixels(batch.images), strict=True):
                pixels[i] = image
                batch_index[i], batch_position[i], batch_size[i] = batch.index, i - span.start, batch.size
                gen_seconds[i] = batch.seconds / len(span)
                score_seconds[i] = score_time / len(span)
            complete = span.stop // n * n  # rows of the prompts whose N candidates are all scored
            if complete > selector.done:
                finished = selector.advance(scores, complete)
                save = [i for i in finished if selector.kept[i] or config.run.save_rejected]
                host = torch.stack([pixels[i] for i in save]).cpu().numpy() if save else []
                for i, image in zip(save, host, strict=True):
                    rel = image_relpath(shard.run_id, shard.candidate_ids[i])
                    writes[i] = pool.submit(write_png, root, rel, image)
                for i in finished:
                    del pixels[i]
            if on_progress:
                on_progress(len(span))
        hashes = {i: future.result() for i, future in writes.items()}
    paths = {i: image_relpath(shard.run_id, shard.candidate_ids[i]) for i in hashes}

    return ShardOutcome(
        scores=scores,
        selection=selector.result(),
        image_path=[paths.get(i) for i in range(rows)],
        image_sha256=[hashes.get(i) for i in range(rows)],
        batch_index=batch_index,
        batch_position=batch_position,
        batch_size=batch_size,
        generation_seconds=gen_seconds,
        scoring_seconds=score_seconds,
        oom_retries=generator.oom_retries,
        identity=generator.identity,
    )
