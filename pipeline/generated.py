"""The generated source: a diffusion pipeline makes each prompt's candidates, batch by batch.

Images stay on the device (as uint8 pixels) until selection says they are written; only those
are copied to the host, once per batch of finished prompts, and PNG-encoded in the engine's
writer thread. Two optional ways to spend less compute per kept image, which only this source
has:

- **pruning** (``prune``): part-way through denoising, each batch scores its candidates'
  predicted final images and finishes only the best of each prompt; the others are recorded
  with their preview scores and the reason ``pruned_at_step:S``, ranked after the rest.
- **adaptive N** (``run.candidates: {min, max, until_kept}``): candidates come in rounds; a
  prompt gets another round only while it has fewer than ``until_kept`` eligible candidates
  and fewer than ``max`` in all. The catalog's ``round`` column says which round made a row.

A pipeline with its own safety checker (Stable Diffusion 1.x/2.x from the hub) replaces the
images it flags with black ones. Such a candidate is recorded (``safety_flagged``) but its
image is never scored, saved or kept: its scores are null, it takes no part in selection and
ranks last with the reason ``safety_checker``; adaptive N counts it as not eligible.
"""

from __future__ import annotations

import collections
from functools import partial
from pathlib import Path

import numpy as np
import torch

from winnow.catalog.schema import Generation
from winnow.catalog.writer import encode_png
from winnow.models.generator import Batch, Generator, Request, candidate_seed, to_pixels
from winnow.models.prune import Prune
from winnow.pipeline.config import Config
from winnow.pipeline.engine import PRUNED, Candidate, Encoder, Progress, Settings, Shard, ShardPlan, Source

SAFETY_CHECKER = "safety_checker"  # reject reason of a candidate the pipeline's checker flagged


class GeneratedSource(Source):
    name = "generated"

    def __init__(self, config: Config, plan: ShardPlan) -> None:
        self.config = config
        self.generator = Generator(config.generator)
        settings = Settings(
            Path(config.run.out),
            config.scorers,
            config.select,
            config.run.save_rejected,
            config.result_hash(),
            config.run.embeddings,
        )
        super().__init__(plan, settings, self.generator.device)
        self.calls = 0  # pipeline calls so far, over all rounds: the catalog's batch_index

    @property
    def oom_retries(self) -> int:
        return self.generator.oom_retries

    def expected(self) -> int:
        return len(self.plan.prompts) * self.config.rounds.min

    def make(self, shard: Shard, report: Progress) -> None:
        rounds, identity = self.config.rounds, self.generator.identity
        active = list(range(len(shard.prompts)))
        round_ = 0
        while active:
            counts = {p: min(rounds.min, rounds.max - len(shard.candidates[p])) for p in active}
            made = [
                self._new(shard, p, round_, identity) for p, count in counts.items() for _ in range(count)
            ]
            if round_:
                report(0, len(made))
            ends, carried = np.cumsum(list(counts.values())), []
            settled = 0  # prompts of `active` already settled or carried
            requests = [Request(c.row.prompt, c.row.negative_prompt, c.row.seed) for c in made]
            for batch in self.generator.generate(requests, self._pruner(shard, made)):
                self._record(shard, batch, made)
                while settled < len(active) and ends[settled] <= batch.stop:
                    p = active[settled]
                    if not self._settle(shard, p):
                        carried.append(p)
                    settled += 1
                report(batch.stop - batch.start, 0)
            active, round_ = carried, round_ + 1

    def _new(self, shard: Shard, p: int, round_: int, identity: Generation) -> Candidate:
        made = shard.add(p, identity)
        made.row.round = round_
        made.row.seed = candidate_seed(self.config.run.seed, made.row.prompt_id, made.row.candidate_index)
        return made

    def _pruner(self, shard: Shard, made: list[Candidate]) -> Prune | None:
        """The round's pruning (its requests are ``made`` in order), or None when off."""
        prune = self.config.prune
        if prune is None:
            return None
        step = prune.step(self.config.generator.steps)

        def judge(positions: list[int], previews: torch.Tensor) -> torch.Tensor:
            batch = [made[j] for j in positions]
            shard.score(batch, previews, timed=False)  # in its call's time
            keep = torch.zeros(len(batch), dtype=torch.bool)
            for p in dict.fromkeys(c.prompt for c in batch):
                mine = [j for j, c in enumerate(batch) if c.prompt == p]
                mine.sort(key=lambda j: -batch[j].row.scores[prune.scorer])  # stable: ties keep order
                keep[mine[: prune.survivors(len(mine))]] = True
            for c, survives in zip(batch, keep.tolist(), strict=True):
                c.pruned_at = None if survives else step
            return keep

        group = max(collections.Counter(c.prompt for c in made).values())
        decoder = None if prune.preview == "vae" else self.generator.preview_decoder(prune.preview)
        return Prune(step, judge, group, prune.survivors(group), decoder)

    def _record(self, shard: Shard, batch: Batch, made: list[Candidate]) -> None:
        """Record every candidate a finished call covered, and score the images it finished."""
        covered = made[batch.start : batch.stop]
        for position, c in enumerate(covered):
            c.row.batch_index, c.row.batch_position, c.row.batch_size = self.calls, position, batch.size
            c.row.generation_seconds = batch.seconds / len(covered)
        self.calls += 1
        finished = [made[j] for j in batch.rows]
        flagged = batch.flagged or (False,) * len(finished)
        for c, flag in zip(finished, flagged, strict=True):
            c.row.safety_flagged = None if batch.flagged is None else flag
            if flag:  # a blacked-out image: no score or embedding at all, not even a preview's
                c.row.scores, c.embedding = {}, None
        clean = [j for j, flag in enumerate(flagged) if not flag]
        if not clean:
            return
        images = batch.images if len(clean) == len(finished) else batch.images[clean]
        finished = [finished[j] for j in clean]
        shard.score(finished, images)
        for c, pixels in zip(finished, to_pixels(images), strict=True):
            c.image = pixels

    def _settle(self, shard: Shard, p: int) -> bool:
        """Settle prompt ``p`` unless it should get another round; pruned candidates rank after
        the selected ones, by their preview scores, and flagged ones last, in index order."""
        rounds, mine = self.config.rounds, shard.candidates[p]
        if not shard.settle(p, rounds.until_kept if len(mine) < rounds.max else None):
            return False
        flagged = [c for c in mine if c.row.safety_flagged]
        pruned = [c for c in mine if c.pruned_at is not None]
        if pruned:
            pruned.sort(key=lambda c: -c.row.scores[self.config.prune.scorer])
            for rank, c in enumerate(pruned, len(mine) - len(pruned) - len(flagged) + 1):
                c.row.rank, c.row.reject_reason = rank, f"{PRUNED}:{c.pruned_at}"
        for rank, c in enumerate(flagged, len(mine) - len(flagged) + 1):
            c.row.rank, c.row.reject_reason = rank, SAFETY_CHECKER
        return True

    def encoders(self, candidates: list[Candidate]) -> list[Encoder]:
        if not candidates:
            return []
        host = torch.stack([c.image for c in candidates]).cpu().numpy()  # one copy per settle
        return [(".png", partial(encode_png, pixels)) for pixels in host]
