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

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from catalog.writer import image_relpath, write_png
from flows.config import Config
from flows.prompts import Prompt
from models.generator import Generator, Request, candidate_seed, to_pixels
from models.prune import Prune
from scoring.base import Candidates, Scorer, build_scorers
from scoring.select import select

PRUNED = "pruned_at_step"

Progress = Callable[[int, int], None]  # (candidates done, candidates newly expected)


@dataclass(eq=False)
class ShardOutcome:
    """Everything the catalog records per candidate, one entry per row, rows ordered by
    prompt (``prompt_index`` into the shard's prompts) and candidate index.

    ``generation_seconds``/``scoring_seconds`` are each call's wall time divided by the
    candidates it produced (a pruned candidate's preview scoring counts as generation).
    ``oom_retries`` counts pipeline calls retried at half size.
    """

    scores: dict[str, list[float]]  # scorer name -> score per row, higher is better
    prompt_index: list[int] = field(default_factory=list)
    candidate_index: list[int] = field(default_factory=list)
    round: list[int] = field(default_factory=list)
    seed: list[int] = field(default_factory=list)
    combined: list[float] = field(default_factory=list)
    rank: list[int] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)
    image_path: list[str | None] = field(default_factory=list)
    image_sha256: list[str | None] = field(default_factory=list)
    batch_index: list[int] = field(default_factory=list)
    batch_position: list[int] = field(default_factory=list)
    batch_size: list[int] = field(default_factory=list)
    generation_seconds: list[float] = field(default_factory=list)
    scoring_seconds: list[float] = field(default_factory=list)
    pruned_at: list[int | None] = field(default_factory=list)
    oom_retries: int = 0
    identity: dict[str, object] = field(default_factory=dict)

    def add(self, prompt: int, index: int, round_: int, seed: int) -> int:
        """Append a row for a new candidate; its index."""
        for column, value in (
            (self.prompt_index, prompt),
            (self.candidate_index, index),
            (self.round, round_),
            (self.seed, seed),
            (self.combined, -np.inf),
            (self.rank, 0),
            (self.kept, False),
            (self.reason, None),
            (self.image_path, None),
            (self.image_sha256, None),
            (self.batch_index, 0),
            (self.batch_position, 0),
            (self.batch_size, 0),
            (self.generation_seconds, 0.0),
            (self.scoring_seconds, 0.0),
            (self.pruned_at, None),
        ):
            column.append(value)
        for values in self.scores.values():
            values.append(np.nan)
        return len(self.seed) - 1

    def sorted(self) -> ShardOutcome:
        """The rows ordered by (prompt, candidate index)."""
        order = sorted(range(len(self.seed)), key=lambda i: (self.prompt_index[i], self.candidate_index[i]))
        columns = {
            name: [value[i] for i in order] for name, value in vars(self).items() if isinstance(value, list)
        }
        scores = {name: [values[i] for i in order] for name, values in self.scores.items()}
        return ShardOutcome(scores, oom_retries=self.oom_retries, identity=self.identity, **columns)


def _score(scorers: list[Scorer], images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    batch = Candidates(images, prompts)  # one CLIP embedding per batch, shared by the scorers
    return {scorer.name: scorer.score(batch) for scorer in scorers}


class _Shard:
    """One shard's run: the growing table of candidates, their pixels until selection, and
    the background image writes."""

    def __init__(self, config: Config, run_id: str, prompts: Sequence[Prompt], pool: ThreadPoolExecutor):
        self.config, self.run_id, self.prompts, self.pool = config, run_id, prompts, pool
        self.generator = Generator(config.generator)
        self.scorers = build_scorers(config.scorers, self.generator.device)
        for scorer in self.scorers:
            scorer.setup()
        self.out = ShardOutcome({s.name: [] for s in self.scorers})
        self.rows: list[list[int]] = [[] for _ in prompts]  # each prompt's rows, in index order
        self.pixels: dict[int, torch.Tensor] = {}  # (H, W, 3) uint8 on the device, not yet selected
        self.writes: dict[int, Future[str]] = {}
        self.calls = 0  # pipeline calls so far, over all rounds: the catalog's batch_index

    def candidate_id(self, row: int) -> str:
        return f"{self.prompts[self.out.prompt_index[row]].id}-{self.out.candidate_index[row]:03d}"

    def new_round(self, round_: int, counts: dict[int, int]) -> list[int]:
        """Add ``counts[p]`` new candidates to each prompt ``p``; their rows, prompt by prompt."""
        new = []
        for p, count in counts.items():
            for k in range(len(self.rows[p]), len(self.rows[p]) + count):
                row = self.out.add(p, k, round_, candidate_seed(self.config.run.seed, self.prompts[p].id, k))
                self.rows[p].append(row)
                new.append(row)
        return new

    def request(self, row: int) -> Request:
        prompt = self.prompts[self.out.prompt_index[row]]
        return Request(prompt.text, prompt.negative, self.out.seed[row])

    def pruner(self, rows: list[int]) -> Prune | None:
        """The round's pruning (requests are ``rows`` in order), or None when off."""
        prune = self.config.prune
        if prune is None:
            return None
        step = prune.step(self.config.generator.steps)

        def judge(positions: list[int], previews: torch.Tensor) -> torch.Tensor:
            batch = [rows[j] for j in positions]
            scores = _score(self.scorers, previews, [self.request(r).prompt for r in batch])
            for name, values in scores.items():
                for row, value in zip(batch, values.tolist(), strict=True):
                    self.out.scores[name][row] = value
            keep = torch.zeros(len(batch), dtype=torch.bool)
            ranking = scores[prune.scorer]
            for p in dict.fromkeys(self.out.prompt_index[r] for r in batch):
                mine = [j for j, r in enumerate(batch) if self.out.prompt_index[r] == p]
                best = sorted(mine, key=lambda j: -ranking[j].item())  # stable: ties keep order
                keep[best[: prune.survivors(len(mine))]] = True
            for j, row in enumerate(batch):
                if not keep[j]:
                    self.out.pruned_at[row] = step
            return keep

        return Prune(step, judge)

    def record(self, batch, rows: list[int]) -> None:
        """Score a finished batch's images and record every row the call covered."""
        out = self.out
        covered = rows[batch.start : batch.stop]
        finished = [rows[j] for j in batch.rows]
        for position, row in enumerate(covered):
            out.batch_index[row], out.batch_position[row] = self.calls, position
            out.batch_size[row] = batch.size
            out.generation_seconds[row] = batch.seconds / len(covered)
        self.calls += 1
        if not finished:
            return
        began = time.perf_counter()
        scores = _score(self.scorers, batch.images, [self.request(r).prompt for r in finished])
        seconds = (time.perf_counter() - began) / len(finished)
        for name, values in scores.items():
            for row, value in zip(finished, values.tolist(), strict=True):
                out.scores[name][row] = value
        for row, image in zip(finished, to_pixels(batch.images), strict=True):
            self.pixels[row] = image
            out.scoring_seconds[row] = seconds

    def settle(self, p: int) -> bool:
        """Select prompt ``p`` over its candidates so far; if it has enough eligible ones or
        no more may be made, write its images and return True, else leave it for a new round."""
        out, rounds = self.out, self.config.rounds
        live = [r for r in self.rows[p] if out.pruned_at[r] is None]
        scores = {name: np.asarray(values)[live] for name, values in out.scores.items()}
        chosen = select(scores, [p] * len(live), self.config.select)
        if chosen.eligible.sum() < rounds.until_kept and len(self.rows[p]) < rounds.max:
            return False
        for j, row in enumerate(live):
            out.combined[row], out.rank[row] = float(chosen.combined[j]), int(chosen.rank[j])
            out.kept[row], out.reason[row] = bool(chosen.kept[j]), chosen.reason[j]
        if self.config.prune:  # pruned candidates rank last, by their preview scores
            preview = out.scores[self.config.prune.scorer]
            pruned = [r for r in self.rows[p] if out.pruned_at[r] is not None]
            pruned.sort(key=lambda r: -preview[r])
            for rank, row in enumerate(pruned, len(live) + 1):
                out.rank[row], out.reason[row] = rank, f"{PRUNED}:{out.pruned_at[row]}"
        save = [r for r in live if out.kept[r] or self.config.run.save_rejected]
        host = torch.stack([self.pixels[r] for r in save]).cpu().numpy() if save else []
        for row, image in zip(save, host, strict=True):
            relpath = image_relpath(self.run_id, self.candidate_id(row))
            self.writes[row] = self.pool.submit(write_png, Path(self.config.run.out), relpath, image)
        for row in live:
            del self.pixels[row]
        return True

    def finish(self) -> ShardOutcome:
        for row, future in self.writes.items():
            self.out.image_sha256[row] = future.result()
            self.out.image_path[row] = image_relpath(self.run_id, self.candidate_id(row))
        self.out.oom_retries = self.generator.oom_retries
        self.out.identity = self.generator.identity
        return self.out.sorted()


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
