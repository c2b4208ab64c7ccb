"""The shard engine: generate a shard's candidates batch by batch, score every batch on the
device, select each prompt as soon as all its candidates are scored, and encode, hash and
write its kept images in a background thread while the next batch generates.

Only the images selection keeps (all of them with ``run.save_rejected``) are PNG-encoded, and
that CPU work overlaps the device's work on the next batch instead of following the last one.
Images stay on the device (as uint8 pixels) until selection says they are written; only those
are copied to the host, once per batch of finished prompts.

Two optional ways to spend less compute per kept image:

- **pruning** (``prune``): part-way through denoising, each batch scores its candidates'
  predicted final images and finishes only the best of each prompt; the others are recorded
  with their preview scores and the reason ``pruned_at_step:S``.
- **adaptive N** (``run.candidates: {min, max, until_kept}``): candidates come in rounds; a
  prompt gets another round only while it has fewer than ``until_kept`` eligible candidates
  and fewer than ``max`` in all. The catalog's ``round`` column says which round made a row.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from winnow.catalog.writer import image_relpath, write_png
from winnow.models.generator import Batch, Generator, Request, candidate_seed, to_pixels
from winnow.models.prune import Prune
from winnow.pipeline.config import Config
from winnow.pipeline.prompts import Prompt
from winnow.scoring.base import Candidates, build_scorers
from winnow.scoring.select import select

PRUNED = "pruned_at_step"

Progress = Callable[[int, int], None]  # (candidates done, candidates newly expected)


@dataclass(eq=False)
class Row:
    """One candidate, as the catalog records it (``catalog/schema.py`` has the meanings)."""

    prompt: int  # index into the shard's prompts
    candidate_index: int
    round: int
    seed: int
    scores: dict[str, float]  # scorer name -> score, higher is better (a preview's if pruned)
    combined_score: float = -np.inf
    rank: int = 0
    kept: bool = False
    reject_reason: str | None = None
    image_path: str | None = None
    image_sha256: str | None = None
    batch_index: int = 0
    batch_position: int = 0
    batch_size: int = 0
    generation_seconds: float = 0.0  # its call's wall time / the candidates the call covered
    scoring_seconds: float = 0.0  # a pruned candidate's preview scoring is in its call's time
    pruned_at: int | None = None
    pixels: torch.Tensor | None = None  # (H, W, 3) uint8 on the device, until selected


@dataclass(frozen=True, eq=False)
class ShardOutcome:
    """The shard's candidates ordered by prompt and candidate index; ``oom_retries`` counts
    pipeline calls retried at half size; ``identity`` is the generator's (model, settings)."""

    rows: list[Row]
    oom_retries: int
    identity: dict[str, object]


class _Shard:
    """One shard's run: its candidates so far, by prompt, and the background image writes."""

    def __init__(self, config: Config, run_id: str, prompts: Sequence[Prompt], pool: ThreadPoolExecutor):
        self.config, self.run_id, self.prompts, self.pool = config, run_id, prompts, pool
        self.generator = Generator(config.generator)
        self.scorers = build_scorers(config.scorers, self.generator.device)
        for scorer in self.scorers:
            scorer.setup()
        self.rows: list[list[Row]] = [[] for _ in prompts]  # each prompt's, in index order
        self.writes: list[tuple[Row, Future[str]]] = []
        self.calls = 0  # pipeline calls so far, over all rounds: the catalog's batch_index

    def candidate_id(self, row: Row) -> str:
        return f"{self.prompts[row.prompt].id}-{row.candidate_index:03d}"

    def request(self, row: Row) -> Request:
        prompt = self.prompts[row.prompt]
        return Request(prompt.text, prompt.negative, row.seed)

    def new_round(self, round_: int, counts: dict[int, int]) -> list[Row]:
        """Add ``counts[p]`` new candidates to each prompt ``p``; them, prompt by prompt."""
        new: list[Row] = []
        for p, count in counts.items():
            start, prompt_id = len(self.rows[p]), self.prompts[p].id
            made = [
                Row(p, k, round_, candidate_seed(self.config.run.seed, prompt_id, k), {})
                for k in range(start, start + count)
            ]
            self.rows[p] += made
            new += made
        return new

    def score(self, rows: list[Row], images: torch.Tensor) -> None:
        """Score ``images`` (one per row, on the device) into ``rows``."""
        batch = Candidates(images, [self.prompts[r.prompt].text for r in rows])
        for scorer in self.scorers:  # one CLIP image embedding per batch, shared by the scorers
            for row, value in zip(rows, scorer.score(batch).tolist(), strict=True):
                row.scores[scorer.name] = value

    def pruner(self, rows: list[Row]) -> Prune | None:
        """The round's pruning (its requests are ``rows`` in order), or None when off."""
        prune = self.config.prune
        if prune is None:
            return None
        step = prune.step(self.config.generator.steps)

        def judge(positions: list[int], previews: torch.Tensor) -> torch.Tensor:
            batch = [rows[j] for j in positions]
            self.score(batch, previews)
            keep = torch.zeros(len(batch), dtype=torch.bool)
            for p in dict.fromkeys(r.prompt for r in batch):
                mine = [j for j, r in enumerate(batch) if r.prompt == p]
                mine.sort(key=lambda j: -batch[j].scores[prune.scorer])  # stable: ties keep order
                keep[mine[: prune.survivors(len(mine))]] = True
            for row, survives in zip(batch, keep.tolist(), strict=True):
                row.pruned_at = None if survives else step
            return keep

        group = max(collections.Counter(r.prompt for r in rows).values())
        decoder = None if prune.preview == "vae" else self.generator.preview_decoder(prune.preview)
        return Prune(step, judge, group, prune.survivors(group), decoder)

    def record(self, batch: Batch, rows: list[Row]) -> None:
        """Record every row a finished call covered, and score the images it finished."""
        covered = rows[batch.start : batch.stop]
        for position, row in enumerate(covered):
            row.batch_index, row.batch_position, row.batch_size = self.calls, position, batch.size
            row.generation_seconds = batch.seconds / len(covered)
        self.calls += 1
        finished = [rows[j] for j in batch.rows]
        if not finished:
            return
        began = time.perf_counter()
        self.score(finished, batch.images)
        seconds = (time.perf_counter() - began) / len(finished)
        for row, pixels in zip(finished, to_pixels(batch.images), strict=True):
            row.pixels, row.scoring_seconds = pixels, seconds

    def settle(self, p: int) -> bool:
        """Select prompt ``p`` over its candidates so far; if it has enough eligible ones or
        no more may be made, write its images and return True, else leave it for a new round."""
        rounds, mine = self.config.rounds, self.rows[p]
        live = [r for r in mine if r.pruned_at is None]
        scores = {s.name: np.array([r.scores[s.name] for r in live]) for s in self.scorers}
        chosen = select(scores, [p] * len(live), self.config.select)
        if chosen.eligible.sum() < rounds.until_kept and len(mine) < rounds.max:
            return False
        for j, row in enumerate(live):
            row.combined_score, row.rank = float(chosen.combined[j]), int(chosen.rank[j])
            row.kept, row.reject_reason = bool(chosen.kept[j]), chosen.reason[j]
        if self.config.prune:  # pruned candidates rank last, by their preview scores
            pruned = [r for r in mine if r.pruned_at is not None]
            pruned.sort(key=lambda r: -r.scores[self.config.prune.scorer])
            for rank, row in enumerate(pruned, len(live) + 1):
                row.rank, row.reject_reason = rank, f"{PRUNED}:{row.pruned_at}"
        save = [r for r in live if r.kept or self.config.run.save_rejected]
        host = torch.stack([r.pixels for r in save]).cpu().numpy() if save else []
        for row, pixels in zip(save, host, strict=True):
            row.image_path = image_relpath(self.run_id, self.candidate_id(row))
            self.writes.append(
                (row, self.pool.submit(write_png, Path(self.config.run.out), row.image_path, pixels))
            )
        for row in live:
            row.pixels = None
        return True

    def finish(self) -> ShardOutcome:
        for row, future in self.writes:
            row.image_sha256 = future.result()
        rows = [row for mine in self.rows for row in mine]
        return ShardOutcome(rows, self.generator.oom_retries, self.generator.identity)


def run_shard(
    config: Config, run_id: str, prompts: Sequence[Prompt], on_progress: Progress | None = None
) -> ShardOutcome:
    """Generate, score and select the candidates of ``prompts`` (in rounds, see the module
    docstring) and write the images to keep under ``run.out``."""
    rounds = config.rounds
    report = on_progress or (lambda done, more: None)
    # One writer thread: zlib compression and sha256 release the GIL for most of their time,
    # so it runs beside the pipeline's Python thread; more would compete with torch for cores.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="winnow-write") as pool:
        shard = _Shard(config, run_id, prompts, pool)
        active = list(range(len(prompts)))
        round_ = 0
        while active:
            counts = {p: min(rounds.min, rounds.max - len(shard.rows[p])) for p in active}
            rows = shard.new_round(round_, counts)
            if round_:
                report(0, len(rows))
            ends, carried = np.cumsum([counts[p] for p in active]), []
            settled = 0  # prompts of `active` already settled or carried
            requests = [shard.request(r) for r in rows]
            for batch in shard.generator.generate(requests, shard.pruner(rows)):
                shard.record(batch, rows)
                while settled < len(active) and ends[settled] <= batch.stop:
                    p = active[settled]
                    if not shard.settle(p):
                        carried.append(p)
                    settled += 1
                report(batch.stop - batch.start, 0)
            active, round_ = carried, round_ + 1
        return shard.finish()
