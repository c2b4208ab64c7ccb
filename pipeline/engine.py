"""The engine: score, select and write one shard's candidates, whatever their source.

A source (``pipeline/generated.py``: candidates a diffusion pipeline makes;
``pipeline/images.py``: existing image files) adds a shard's candidates and hands their images
to the engine batch by batch. The engine scores every batch on the device (the scorers share
one CLIP image embedding per batch), selects a prompt as soon as the source says all its
candidates are there, and writes the images selection keeps (all of them with
``run.save_rejected``) in a background thread, so encoding and hashing them overlaps the
source's work on the next batch. ``pipeline/shard.py`` plans shards and writes each one's part.

A scorer or a selection rule added once works for every source: the engine is the only place
that builds scorers, calls the policy and writes images.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from winnow.catalog.embeddings import embeddings_path, write_embeddings
from winnow.catalog.schema import Generation, Row, candidate_id
from winnow.catalog.writer import image_relpath, write_image
from winnow.pipeline.prompts import Prompt
from winnow.scoring.base import Candidates, build_scorers
from winnow.scoring.clip import image_embeddings
from winnow.scoring.head import embedding_spec
from winnow.scoring.phash import perceptual_hashes, require
from winnow.scoring.select import Policy, select

PRUNED = "pruned_at_step"  # reject reason of a candidate pruning stopped: pruned_at_step:<S>

Progress = Callable[[int, int], None]  # (candidates done, candidates newly expected)
Encoder = tuple[str, Callable[[], bytes]]  # (file suffix, the image file's bytes, made when written)


@dataclass(frozen=True)
class ShardPlan:
    """A task's input: ids and the prompts' records (small, serialisable)."""

    run_id: str
    shard_id: str
    prompts: tuple[Prompt, ...]


@dataclass(frozen=True)
class Settings:
    """What every candidate goes through, whatever its source: the scorers ({name: params}),
    the selection policy, the catalog folder, the content hash its rows record, and whose CLIP
    image embeddings are stored (``run.embeddings``)."""

    root: Path
    scorers: Mapping[str, Any]
    policy: Policy
    save_rejected: bool
    config_hash: str
    embeddings: Literal["all", "kept", "none"] = "all"


@dataclass(eq=False)
class Candidate:
    """A candidate while its shard runs: its catalog row so far, its prompt (an index into the
    shard's prompts) and the source's handle on its image until selection has decided."""

    row: Row
    prompt: int
    image: Any = None  # generated: (H, W, 3) uint8 pixels on the device; external: its file
    pruned_at: int | None = None  # the denoising step pruning stopped it at, if it did
    embedding: np.ndarray | None = None  # (d,) float32 L2-normalised CLIP image embedding
    phash: np.ndarray | None = None  # (64,) bool perceptual hash bits (select.dedup.phash)


class Source(ABC):
    """Where one shard's candidates come from. ``make`` adds them to the shard, scores their
    images with ``Shard.score`` and settles each prompt with ``Shard.settle``; ``encoders``
    gives the bytes of the image files to write."""

    name: ClassVar[str]  # the catalog's ``source`` column

    def __init__(self, plan: ShardPlan, settings: Settings, device: torch.device) -> None:
        self.plan, self.settings, self.device = plan, settings, device

    @property
    def oom_retries(self) -> int:
        """Device calls that ran out of memory and were retried smaller (see ``ShardResult``)."""
        return 0

    @abstractmethod
    def expected(self) -> int:
        """The candidates the shard is planned to have (progress before it runs)."""

    @abstractmethod
    def make(self, shard: Shard, report: Progress) -> None:
        """Add the shard's candidates, score them and settle every prompt."""

    @abstractmethod
    def encoders(self, candidates: list[Candidate]) -> list[Encoder]:
        """Per candidate to save, its file suffix and a function returning the file's bytes
        (called in the writer thread)."""


class Shard:
    """One shard's run: its candidates so far, by prompt, its scorers and its image writes."""

    def __init__(self, source: Source, pool: ThreadPoolExecutor) -> None:
        self.source, self.pool = source, pool
        self.prompts = source.plan.prompts
        self.scorers = build_scorers(source.settings.scorers, source.device)
        for scorer in self.scorers:
            scorer.setup()
        settings = source.settings
        # The one embedding the scorers share (the head scorers' CLIP): stored beside the part,
        # and what within-prompt dedup compares.
        wanted = settings.embeddings != "none" or settings.policy.dedup is not None
        self.embedding = embedding_spec(settings.scorers) if wanted else None
        self.phash = settings.policy.dedup is not None and settings.policy.dedup.phash is not None
        if self.phash:
            require()  # fail before the source makes anything
        self.candidates: list[list[Candidate]] = [[] for _ in self.prompts]  # in index order
        self.writes: list[tuple[Row, Future[str]]] = []

    def add(
        self, p: int, generation: Generation, image: Any = None, prompt_meta: str | None = None
    ) -> Candidate:
        """A new candidate of prompt ``p`` (its next index); ``prompt_meta`` defaults to the
        prompt's."""
        plan, prompt, index = self.source.plan, self.prompts[p], len(self.candidates[p])
        row = Row(
            run_id=plan.run_id,
            source=self.source.name,
            shard_id=plan.shard_id,
            prompt_id=prompt.id,
            candidate_id=candidate_id(prompt.id, index),
            candidate_index=index,
            prompt=prompt.text,
            negative_prompt=prompt.negative,
            prompt_meta=prompt.meta_json if prompt_meta is None else prompt_meta,
            generation=generation,
            config_hash=self.source.settings.config_hash,
        )
        made = Candidate(row, p, image)
        self.candidates[p].append(made)
        return made

    def score(self, candidates: Sequence[Candidate], images: torch.Tensor, timed: bool = True) -> None:
        """Score ``images`` ((n, 3, H, W) in [0, 1] on the device, one per candidate) into the
        rows; ``timed``: record each candidate's share of the seconds taken."""
        began = time.perf_counter()
        batch = Candidates(images, [self.prompts[c.prompt].text for c in candidates])
        for scorer in self.scorers:  # one CLIP image embedding per batch, shared by the scorers
            for c, value in zip(candidates, scorer.score(batch).tolist(), strict=True):
                c.row.scores[scorer.name] = value
        if self.embedding is not None:  # memoised: the scorers computed it for this batch
            vectors = image_embeddings(batch, self.embedding, self.source.device).float().cpu().numpy()
            for c, vector in zip(candidates, vectors, strict=True):
                c.embedding = vector
        if self.phash:
            for c, bits in zip(candidates, perceptual_hashes(images), strict=True):
                c.phash = bits
        if timed:
            seconds = (time.perf_counter() - began) / len(candidates)
            for c in candidates:
                c.row.scoring_seconds = seconds

    def settle(self, p: int, until_kept: int | None = None) -> bool:
        """Select prompt ``p`` over its candidates so far (pruned ones and those the pipeline's
        safety checker flagged take no part: their sources rank and reject them). With
        ``until_kept``, a prompt with fewer eligible candidates is left as it is for another
        round (False); otherwise record the selection, start writing the images to save, and
        return True."""
        settings = self.source.settings
        live = [c for c in self.candidates[p] if c.pruned_at is None and not c.row.safety_flagged]
        scores = {s.name: np.array([c.row.scores[s.name] for c in live]) for s in self.scorers}
        if settings.policy.dedup is None:
            chosen = select(scores, [p] * len(live), settings.policy)
        else:
            # A prompt whose candidates were all flagged selects over none.
            vectors = np.stack([c.embedding for c in live]) if live else np.zeros((0, 0))
            ids = [c.row.candidate_id for c in live]
            hashes = np.array([c.phash for c in live], dtype=bool) if self.phash else None
            chosen = select(scores, [p] * len(live), settings.policy, vectors, ids, hashes)
        if until_kept is not None and chosen.eligible.sum() < until_kept:
            return False
        for j, c in enumerate(live):
            c.row.combined_score, c.row.rank = float(chosen.combined[j]), int(chosen.rank[j])
            c.row.kept, c.row.reject_reason = bool(chosen.kept[j]), chosen.reason[j]
        save = [c for c in live if c.row.kept or settings.save_rejected]
        for c, (suffix, encode) in zip(save, self.source.encoders(save), strict=True):
            c.row.image_path = image_relpath(c.row.run_id, c.row.candidate_id, suffix)
            self.writes.append((c.row, self.pool.submit(self._write, c.row.image_path, encode)))
        for c in live:
            c.image = None
        return True

    def _write(self, relpath: str, encode: Callable[[], bytes]) -> str:
        return write_image(self.source.settings.root, relpath, encode())

    def finish(self) -> list[Row]:
        """The rows, ordered by prompt and candidate index, once their images and embeddings
        are written (the part, written after this, completes the shard)."""
        for row, future in self.writes:
            row.image_sha256 = future.result()
        self._write_embeddings()
        return [c.row for mine in self.candidates for c in mine]

    def _write_embeddings(self) -> None:
        """Store the embeddings of ``run.embeddings``'s rows: all candidates with a final image
        (pruned ones have only a preview's), or only kept ones."""
        mode = self.source.settings.embeddings
        if self.embedding is None or mode == "none":
            return
        stored = [
            c
            for mine in self.candidates
            for c in mine
            if c.embedding is not None and c.pruned_at is None and (mode == "all" or c.row.kept)
        ]
        if stored:
            plan = self.source.plan
            path = embeddings_path(self.source.settings.root, plan.run_id, plan.shard_id)
            write_embeddings(
                path, [c.row.candidate_id for c in stored], np.stack([c.embedding for c in stored])
            )


def run_shard(source: Source, on_progress: Progress | None = None) -> list[Row]:
    """Make, score and select the shard's candidates and write the images to keep under the
    catalog folder; the rows, ordered by prompt and candidate index."""
    report = on_progress or (lambda done, more: None)
    # One writer thread: zlib compression and sha256 release the GIL for most of their time,
    # so it runs beside the device's Python thread; more would compete with torch for cores.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="winnow-write") as pool:
        shard = Shard(source, pool)
        source.make(shard, report)
        return shard.finish()
