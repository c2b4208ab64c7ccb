"""The three loops the benchmarks compare, over the same prompts, seeds and models.

- ``notebook``: what people write first: one ``pipe(prompt)`` call per image (PIL output),
  then each image scored alone through open_clip's PIL transform, the best ``keep`` of each
  prompt saved as PNG.
- ``winnow``: ``winnow.pipeline.shard.process_shard`` over the planned shards: generation, scoring,
  selection and every catalog write (PNGs, Parquet parts).
- ``bound``: the same batched pipeline calls and batched scoring with nothing else: no
  selection, no device-to-host copies, no I/O. winnow cannot beat it by design.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.memory import peak_memory
from winnow.models.generator import Generator, load_pipeline
from winnow.pipeline.config import Config
from winnow.pipeline.prompts import Prompt, read_prompts
from winnow.pipeline.shard import plan_shards, process_shard
from winnow.scoring.aesthetic import load_head
from winnow.scoring.base import Candidates, build_scorers
from winnow.scoring.clip import load_clip
from winnow.scoring.select import select


@dataclass(frozen=True)
class Workload:
    """What every loop generates: ``config.run.candidates`` images for each prompt."""

    config: Config
    prompts: list[Prompt]

    @property
    def images(self) -> int:
        return len(self.prompts) * self.config.run.candidates

    def seeds(self, prompt: Prompt) -> list[int]:
        from winnow.models.generator import candidate_seed

        return [candidate_seed(self.config.run.seed, prompt.id, k) for k in range(self.config.run.candidates)]


def workload(base: dict, prompt_file: Path, prompts: int, batch_size: int, **generator: object) -> Workload:
    """The first ``prompts`` prompts of ``prompt_file`` under config ``base`` (a dict) with
    ``generator.batch_size`` and other generator keys set; one shard unless ``base`` says."""
    data = json.loads(json.dumps(base, default=str))
    data["generator"] |= {"batch_size": batch_size, **generator}
    data["run"].setdefault("shard_size", prompts)
    return Workload(Config.model_validate(data), read_prompts(prompt_file, "", prompts))


@dataclass(frozen=True)
class Timing:
    """One loop's measurement: ``seconds`` of wall time for ``images`` candidates."""

    images: int
    seconds: float
    peak_mib: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @classmethod
    def total(cls, parts: list[Timing]) -> Timing:
        """Several measurements of one loop as one: images and seconds add, the peak is the max."""
        images, seconds = sum(t.images for t in parts), sum(t.seconds for t in parts)
        return cls(images, seconds, max(t.peak_mib for t in parts))

    def as_dict(self) -> dict[str, float]:
        return {
            "images": self.images,
            "seconds": round(self.seconds, 4),
            "images_per_s": round(self.images_per_s, 4),
            "peak_mib": round(self.peak_mib, 1),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[Workload], None], work: Workload) -> Timing:
    """Wall time and peak memory of ``run(work)``, device work included."""
    device = Generator(work.config.generator).device
    with peak_memory(device) as memory:
        _sync(device)
        began = time.perf_counter()
        run(work)
        _sync(device)
        seconds = time.perf_counter() - began
    return Timing(work.images, seconds, memory["peak_mib"])


def notebook(work: Workload) -> None:
    """One pipeline call per image, one image scored at a time, keepers saved with PIL."""
    import open_clip

    cfg, gen = work.config, work.config.generator
    pipe = load_pipeline(gen)
    clip = load_clip(cfg.scorers["clip_score"].clip, Generator(gen).device)
    head = load_head(cfg.scorers["aesthetic"].head, clip.device)
    pp = clip.model.visual.preprocess_cfg
    transform = open_clip.image_transform(
        clip.image_size,
        is_train=False,
        mean=pp["mean"],
        std=pp["std"],
        resize_mode=pp["resize_mode"],
        interpolation=pp["interpolation"],
    )
    out = Path(tempfile.mkdtemp(prefix="winnow-notebook-"))
    for prompt in work.prompts:
        images, clip_scores, aesthetic = [], [], []
        for seed in work.seeds(prompt):
            image = pipe(
                prompt.text,
                negative_prompt=prompt.negative,
                generator=torch.Generator("cpu").manual_seed(seed),
                num_inference_steps=gen.steps,
                guidance_scale=gen.guidance,
                width=gen.width,
                height=gen.height,
            ).images[0]
            pixels = transform(image)[None].to(clip.device)
            tokens = clip.tokenizer([prompt.text]).to(clip.device)
            with torch.no_grad():
                embedding = F.normalize(clip.model.encode_image(pixels), dim=-1)
                text = F.normalize(clip.model.encode_text(tokens), dim=-1)
                clip_scores.append(max(100 * float((embedding * text).sum()), 0.0))
                aesthetic.append(float(head(embedding)))
            images.append(image)
        scores = {"clip_score": np.array(clip_scores), "aesthetic": np.array(aesthetic)}
        chosen = select(scores, [prompt.id] * len(images), cfg.select)
        for k in np.flatnonzero(chosen.kept):
            images[k].save(out / f"{prompt.id}-{k:03d}.png")


def winnow(work: Workload) -> None:
    """``process_shard`` over every planned shard, into a fresh catalog folder."""
    out = tempfile.mkdtemp(prefix="winnow-bench-")
    config = work.config.model_copy(update={"run": work.config.run.model_copy(update={"out": Path(out)})})
    for plan in plan_shards("bench", work.prompts, config.run.shard_size):
        process_shard(config, plan)


def bound(work: Workload) -> None:
    """The same fixed-size pipeline calls and batched scoring, with nothing else."""
    cfg, gen = work.config, work.config.generator
    pipe = load_pipeline(gen)
    scorers = build_scorers(cfg.scorers, Generator(gen).device)
    for scorer in scorers:
        scorer.setup()
    todo = [(p, seed) for p in work.prompts for seed in work.seeds(p)]
    size = gen.batch_size
    for start in range(0, len(todo), size):
        chunk = todo[start : start + size]
        real = len(chunk)
        chunk += [chunk[-1]] * (size - real)
        with torch.inference_mode():
            images = pipe(
                prompt=[p.text for p, _ in chunk],
                negative_prompt=[p.negative for p, _ in chunk],
                generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk],
                num_inference_steps=gen.steps,
                guidance_scale=gen.guidance,
                width=gen.width,
                height=gen.height,
                output_type="pt",
            ).images[:real]
        batch = Candidates(images.float(), [p.text for p, _ in chunk[:real]])
        for scorer in scorers:
            scorer.score(batch)


LOOPS: dict[str, Callable[[Workload], None]] = {"notebook": notebook, "winnow": winnow, "bound": bound}
