"""A run's prompts, from the config's ``prompts`` section: a prompt file, a pool or a template.

- ``path``: every prompt of a prompt file (``winnow.pipeline.prompts``), as written.
- ``pool``: ``sample`` prompts of a large prompt file that are not in the catalog yet.
- ``template``: every expansion of a template (``winnow.pipeline.templates``), or ``sample`` of them
  that are not in the catalog yet.

"Not in the catalog yet" compares prompt ids (content hashes), leaving out the rows of the
run itself, so re-running a run under the same run id picks the same prompts and resumes.
Sampling is seeded by ``run.seed``: the same seed and the same catalog give the same sample.
A pool is ranked by a hash of (seed, prompt id), so reordering the file changes nothing, and
successive runs with one seed walk down the same ranking.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from winnow.catalog.query import prompt_ids
from winnow.models.errors import WinnowError
from winnow.pipeline.config import Config, PromptsConfig
from winnow.pipeline.prompts import Prompt, prompt_id, read_prompts
from winnow.pipeline.templates import Sequence, expand, parse, resolve

MAX_EXPANSIONS = 100_000  # above this a template must be sampled, and is sampled by drawing
DRAWS_PER_PROMPT = 50  # random draws allowed per wanted prompt when sampling a huge template


class PromptSourceError(WinnowError):
    """A prompt source that cannot give the run any prompts."""


@dataclass(frozen=True)
class PromptChoice:
    """The run's prompts, and a note for the user when it got fewer than asked for."""

    prompts: list[Prompt]
    note: str | None = None


def choose_prompts(config: Config) -> PromptChoice:
    """The prompts a run of ``config`` processes (reads the catalog for pools and samples)."""
    section, negative = config.prompts, config.generator.negative_prompt
    if section.path is not None:
        return PromptChoice(read_prompts(section.path, negative, section.limit))
    if section.pool is not None:
        assert section.sample is not None  # PromptsConfig requires it with a pool
        pool = read_prompts(section.pool, negative)
        used = prompt_ids(config.run.out, except_run=config.run.run_id)
        return _take_fresh(pool, section.sample, config.run.seed, used, f"pool {section.pool}")
    templates = Templates.from_config(section)
    if section.sample is None:
        if templates.size > MAX_EXPANSIONS:
            raise PromptSourceError(
                f"prompts.template has {templates.size:,} expansions (more than {MAX_EXPANSIONS:,}): "
                "set prompts.sample to draw that many per run"
            )
        return PromptChoice(templates.all(negative))
    used = prompt_ids(config.run.out, except_run=config.run.run_id)
    if templates.size <= MAX_EXPANSIONS:
        return _take_fresh(templates.all(negative), section.sample, config.run.seed, used, "prompts.template")
    return templates.draw(section.sample, config.run.seed, used, negative)


def describe(config: Config) -> str:
    """One line on where the prompts of each run come from; reads the files, so it also
    checks them (``winnow serve``/``deploy`` call it before scheduling anything)."""
    section, negative = config.prompts, config.generator.negative_prompt
    if section.path is not None:
        prompts = read_prompts(section.path, negative, section.limit)
        return f"prompt file {section.path}: {len(prompts)} prompts"
    if section.pool is not None:
        pool = read_prompts(section.pool, negative)
        used = prompt_ids(config.run.out)
        fresh = sum(p.id not in used for p in pool)
        return (
            f"pool {section.pool}: {len(pool)} prompts, {fresh} not in the catalog yet, "
            f"{section.sample} per run"
        )
    size = Templates.from_config(section).size
    per_run = "every one each run" if section.sample is None else f"{section.sample} new ones per run"
    return f"template: {size:,} expansions, {per_run}"


def _rank(seed: int, pid: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x1f{pid}".encode(), digest_size=8).digest()


def _take_fresh(items: list[Prompt], k: int, seed: int, used: set[str], what: str) -> PromptChoice:
    fresh = [p for p in items if p.id not in used]
    if not fresh:
        raise PromptSourceError(
            f"{what} is exhausted: all {len(items)} of its prompts are already in the catalog"
        )
    chosen = {p.id for p in sorted(fresh, key=lambda p: _rank(seed, p.id))[:k]}
    note = None
    if len(fresh) < k:
        note = f"{what}: only {len(fresh)} new prompts were left (prompts.sample is {k}); took them all"
    return PromptChoice([p for p in fresh if p.id in chosen], note)  # in source order


@dataclass(frozen=True)
class Templates:
    """One or more parsed templates, their word lists read; expansions numbered across them."""

    texts: tuple[str, ...]
    nodes: tuple[Sequence, ...]

    @classmethod
    def from_config(cls, section: PromptsConfig) -> Templates:
        texts = (section.template,) if isinstance(section.template, str) else tuple(section.template or ())
        nodes = tuple(resolve(parse(t), section.wordlists) for t in texts)
        return cls(texts, nodes)  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        return sum(n.size for n in self.nodes)

    def prompt(self, index: int, negative: str) -> Prompt:
        """Expansion ``index`` across all templates, as a prompt recording how it was made."""
        for text, node in zip(self.texts, self.nodes, strict=True):
            if index < node.size:
                prompt, choices = expand(node, index)
                meta = {"template": text, "choices": [c.as_meta() for c in choices]}
                return Prompt(prompt_id(prompt, negative), prompt, negative, meta)
            index -= node.size
        raise IndexError("expansion index out of range")

    def all(self, negative: str) -> list[Prompt]:
        """Every expansion in order, the first of each distinct text only; empty ones skipped."""
        unique: dict[str, Prompt] = {}
        for index in range(self.size):
            p = self.prompt(index, negative)
            if p.text:
                unique.setdefault(p.id, p)
        if not unique:
            raise PromptSourceError("prompts.template expands only to empty prompts")
        return list(unique.values())

    def draw(self, k: int, seed: int, used: set[str], negative: str) -> PromptChoice:
        """``k`` distinct new expansions by seeded uniform draws (for templates too large to
        list); gives up after ``DRAWS_PER_PROMPT * k`` draws."""
        rng = random.Random(seed)
        chosen: dict[str, Prompt] = {}
        for _ in range(DRAWS_PER_PROMPT * k):
            p = self.prompt(rng.randrange(self.size), negative)
            if p.text and p.id not in used:
                chosen.setdefault(p.id, p)
                if len(chosen) == k:
                    return PromptChoice(list(chosen.values()))
        if not chosen:
            raise PromptSourceError(
                f"prompts.template: no new prompt in {DRAWS_PER_PROMPT * k} random draws "
                "(nearly every expansion is in the catalog already)"
            )
        note = f"prompts.template: found only {len(chosen)} new prompts in {DRAWS_PER_PROMPT * k} draws"
        return PromptChoice(list(chosen.values()), note)
