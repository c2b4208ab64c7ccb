"""Quality measurements of the shapes models (the training's ``evaluate`` stage and the core's
``bench/quality.py`` both use them).

CLIP embeddings, CLIP scores and aesthetic scores go through ``scoring/`` (the same loading,
preprocessing and scorer code a winnow run uses), so what is measured here is what winnow sees.
All rates are fractions in [0, 1]; every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline

from winnow.models.shapes import oracle
from winnow.models.shapes.data import FULL_CAPTIONS, render_pool
from winnow.models.shapes.degrade import degrade_batch
from winnow.models.shapes.train_preview import collect_latents, vae_decode
from winnow.models.shapes.train_vae import reconstruct
from winnow.models.shapes.world import all_scenes
from winnow.scoring.aesthetic import AestheticHead
from winnow.scoring.base import Candidates
from winnow.scoring.clip import ClipSpec, encode_images, encode_texts
from winnow.scoring.clip_score import ClipScoreParams, ClipScoreScorer

EVAL_SEED = 10_000  # renders used for evaluation come from seeds no training stage uses
CPU = torch.device("cpu")

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 1.5  # = configs/demo.yaml; single-sample adherence ~81%, see the README


def _labels(ids: np.ndarray) -> list[tuple[str, str, str]]:
    scenes = all_scenes()
    return [(scenes[i].colour, scenes[i].shape, scenes[i].background or "") for i in ids]


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [0, 1], the scorers' input."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def degraded_set(
    images: np.ndarray, p_clean: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Degrade each image at a random level (0 with probability ``p_clean``, else U(0, 1))."""
    levels = rng.uniform(0.0, 1.0, len(images))
    levels[rng.uniform(size=len(images)) < p_clean] = 0.0
    return degrade_batch(images, levels, rng), levels


def vae_roundtrip(vae: AutoencoderKL, n: int = 500, seed: int = EVAL_SEED) -> float:
    """Oracle accuracy (all three attributes) on VAE reconstructions of ``n`` clean renders."""
    images, ids = render_pool(n, seed)
    recon = reconstruct(vae, images)
    return float(np.mean([oracle.read(r) == t for r, t in zip(recon, _labels(ids), strict=True)]))


def clip_zero_shot(clip: ClipSpec, n: int = 1000, seed: int = EVAL_SEED + 1) -> dict[str, float]:
    """Zero-shot accuracy over the 69 full captions on ``n`` held-out clean renders.

    ``exact``: the top caption names colour, shape and background right; ``colour``,
    ``shape``, ``background``: per-attribute accuracy of the top caption.
    """
    images, ids = render_pool(n, seed)
    sims = encode_images(as_tensor(images), clip, CPU) @ encode_texts(FULL_CAPTIONS, clip, CPU).T
    got, want = _labels(sims.argmax(1).numpy()), _labels(ids)
    out = {"exact": float(np.mean([g == w for g, w in zip(got, want, strict=True)]))}
    for k, name in enumerate(("colour", "shape", "background")):
        out[name] = float(np.mean([g[k] == w[k] for g, w in zip(got, want, strict=True)]))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks)."""
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


@torch.no_grad()
def aesthetic_spearman(
    clip: ClipSpec, head: AestheticHead, n: int = 1000, seed: int = EVAL_SEED + 2
) -> dict[str, float]:
    """Spearman(score, -level) over ``n`` held-out renders degraded at random levels (25%
    clean), and the mean score of clean (level 0) and heavily degraded (level > 0.8) images."""
    images, _ = render_pool(n, seed)
    x, levels = degraded_set(images, 0.25, np.random.default_rng(seed))
    score = head(encode_images(as_tensor(x), clip, CPU)).numpy()
    return {
        "spearman": spearman(score, -levels),
        "clean_mean": float(score[levels == 0].mean()),
        "heavy_mean": float(score[levels > 0.8].mean()),
    }


def generate(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    batch: int = 16,
) -> np.ndarray:
    """One 32x32 image per (prompt, seed): uint8 ``(N, 32, 32, 3)``."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]]
        res = pipe(
            list(prompts[i : i + batch]),
            height=32,
            width=32,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
        ).images
        out.append(np.clip(np.rint(np.asarray(res) * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def clip_scores(clip: ClipSpec, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """winnow's ``clip_score`` of each image with its own prompt (0-100)."""
    scorer = ClipScoreScorer(ClipScoreParams(clip=clip), CPU)
    return scorer.score(Candidates(as_tensor(images), list(prompts))).numpy()


def best_of_n(
    pipe: DiffusionPipeline,
    clip: ClipSpec,
    prompts: Sequence[str] = FULL_CAPTIONS,
    n: int = 8,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = EVAL_SEED + 3,
) -> dict[str, float]:
    """Generate ``n`` candidates per prompt and measure oracle adherence.

    ``single``: mean adherence of all candidates (= random-of-n in expectation); ``best``:
    adherence of the candidate ranked first by CLIP score; ``any``: prompts with at least one
    right candidate.
    """
    rep = [p for p in prompts for _ in range(n)]
    seeds = [seed + i for i in range(len(rep))]
    images = generate(pipe, rep, seeds, steps, guidance)
    ok = np.asarray([oracle.adherence(im, p) for im, p in zip(images, rep, strict=True)])
    score = clip_scores(clip, images, rep).reshape(len(prompts), n)
    ok2 = ok.reshape(len(prompts), n)
    best = ok2[np.arange(len(prompts)), score.argmax(1)]
    return {"single": float(ok.mean()), "best": float(best.mean()), "any": float(ok2.any(1).mean())}


def preview_psnr(
    pipe: DiffusionPipeline,
    preview: AutoencoderTiny,
    n: int = 64,
    early: int = 8,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = EVAL_SEED + 4,
) -> float:
    """PSNR (dB, images in [-1, 1]) of ``preview``'s decodes against the VAE's, on what
    pruning decodes: x0 estimates after steps 1..``early`` and final latents of ``n`` held-out
    generations."""
    prompts = [FULL_CAPTIONS[i % len(FULL_CAPTIONS)] for i in range(n)]
    latents = collect_latents(pipe, prompts, [seed + i for i in range(n)], early, steps, guidance)
    with torch.no_grad():
        mse = F.mse_loss(preview.decode(latents).sample.clamp(-1, 1), vae_decode(pipe, latents))
    return float(10 * torch.log10(4 / mse))


def sampling_speed(
    pipe: DiffusionPipeline,
    n: int = 32,
    batch: int = 16,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
) -> float:
    """Images per second generating ``n`` 32x32 images at ``batch`` (after one warm-up batch)."""
    prompts = [FULL_CAPTIONS[i % len(FULL_CAPTIONS)] for i in range(n)]
    generate(pipe, prompts[:batch], list(range(batch)), steps, guidance, batch)
    t0 = time.perf_counter()
    generate(pipe, prompts, list(range(n)), steps, guidance, batch)
    return n / (time.perf_counter() - t0)
