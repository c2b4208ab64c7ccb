"""Quality measurements of the shapes models (reused by the core's ``bench/quality.py``).

All rates are fractions in [0, 1]; every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline

from models.shapes import oracle
from models.shapes.data import FULL_CAPTIONS, render_pool
from models.shapes.train_aesthetic import AestheticHead, degraded_set, embed_images
from models.shapes.train_vae import reconstruct
from models.shapes.world import all_scenes

EVAL_SEED = 10_000  # renders used for evaluation come from seeds no training stage uses

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0


def _labels(ids: np.ndarray) -> list[tuple[str, str, str]]:
    scenes = all_scenes()
    return [(scenes[i].colour, scenes[i].shape, scenes[i].background or "") for i in ids]


def vae_roundtrip(vae: AutoencoderKL, n: int = 500, seed: int = EVAL_SEED) -> float:
    """Oracle accuracy (all three attributes) on VAE reconstructions of ``n`` clean renders."""
    images, ids = render_pool(n, seed)
    recon = reconstruct(vae, images)
    return float(np.mean([oracle.read(r) == t for r, t in zip(recon, _labels(ids), strict=True)]))


@torch.no_grad()
def text_embeddings(model: open_clip.CLIP, captions: Sequence[str]) -> torch.Tensor:
    """L2-normalised text embeddings ``(len(captions), embed_dim)``."""
    device = next(model.parameters()).device
    return F.normalize(model.encode_text(open_clip.tokenize(list(captions)).to(device)), dim=-1).cpu()


def clip_zero_shot(model: open_clip.CLIP, n: int = 1000, seed: int = EVAL_SEED + 1) -> dict[str, float]:
    """Zero-shot accuracy over the 69 full captions on ``n`` held-out clean renders.

    ``exact``: the top caption names colour, shape and background right; ``colour``,
    ``shape``, ``background``: per-attribute accuracy of the top caption.
    """
    images, ids = render_pool(n, seed)
    pred = (embed_images(model, images) @ text_embeddings(model, FULL_CAPTIONS).T).argmax(1)
    got, want = _labels(pred.numpy()), _labels(ids)
    out = {"exact": float(np.mean([g == w for g, w in zip(got, want, strict=True)]))}
    for k, name in enumerate(("colour", "shape", "background")):
        out[name] = float(np.mean([g[k] == w[k] for g, w in zip(got, want, strict=True)]))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def rank(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # average ties
            m = v == val
            r[m] = r[m].mean()
        return r

    return float(np.corrcoef(rank(np.asarray(a)), rank(np.asarray(b)))[0, 1])


@torch.no_grad()
def aesthetic_spearman(
    model: open_clip.CLIP, head: AestheticHead, n: int = 1000, seed: int = EVAL_SEED + 2
) -> dict[str, float]:
    """Spearman(score, -level) over ``n`` held-out renders degraded at random levels, and the
    mean score of clean (level 0) images."""
    images, _ = render_pool(n, seed)
    x, levels = degraded_set(images, 0.25, np.random.default_rng(seed))
    score = head(embed_images(model, x)).squeeze(1).numpy()
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


@torch.no_grad()
def clip_scores(model: open_clip.CLIP, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """CLIP score ``max(100 * cos(image, text), 0)`` of each image with its own prompt."""
    img = embed_images(model, images)
    txt = text_embeddings(model, prompts)
    return np.maximum(100.0 * (img * txt).sum(1).numpy(), 0.0)


def best_of_n(
    pipe: DiffusionPipeline,
    model: open_clip.CLIP,
    prompts: Sequence[str] = FULL_CAPTIONS,
    n: int = 8,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = EVAL_SEED + 3,
) -> dict[str, float]:
    """Generate ``n`` candidates per prompt and measure oracle adherence.

    ``single``: mean adherence of all candidates (= random-of-n); ``best``: adherence of the
    candidate ranked first by CLIP score; ``any``: prompts with at least one right candidate.
    """
    rep = [p for p in prompts for _ in range(n)]
    seeds = [seed + i for i in range(len(rep))]
    images = generate(pipe, rep, seeds, steps, guidance)
    ok = np.asarray([oracle.adherence(im, p) for im, p in zip(images, rep, strict=True)])
    score = clip_scores(model, images, rep).reshape(len(prompts), n)
    ok2 = ok.reshape(len(prompts), n)
    best = ok2[np.arange(len(prompts)), score.argmax(1)]
    return {"single": float(ok.mean()), "best": float(best.mean()), "any": float(ok2.any(1).mean())}


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
