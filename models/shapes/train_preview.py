"""Distil the shapes VAE decoder into a diffusers ``AutoencoderTiny`` (TAESD's architecture at
the shapes size) that decodes pruning previews cheaply: ``prune.preview: bundled:shapes-preview``.

Only its decoder is trained and used; the encoder is a stub no winnow path calls. Its inputs are
what previews decode, collected from the exported pipeline at the demo's settings: the
scheduler's x0 estimates early in denoising (blurry, off the data manifold) and finished
latents. Its targets are the full VAE's decodes of the same latents.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny, DiffusionPipeline

from winnow.models.prune import StepRecorder
from winnow.models.shapes.data import cosine_lr

Log = Callable[[str], None]


@dataclass(frozen=True)
class PreviewConfig:
    steps: int = 1200
    batch: int = 128
    lr: float = 2e-3
    channels: int = 32  # decoder width: ~100k parameters, 2.5-4x cheaper than the VAE decoder on a CPU
    candidates: int = 1024  # generations whose latents are the training inputs
    early: int = 8  # x0 estimates after denoising steps 1..early (prune.at up to 0.4 at 20 steps)


def build_preview(latent_channels: int, channels: int) -> AutoencoderTiny:
    """Three decoder blocks, two 2x upsamplings: the shapes VAE's 8x8 latents -> 32x32 images."""
    return AutoencoderTiny(
        latent_channels=latent_channels,
        encoder_block_out_channels=(8,),
        num_encoder_blocks=(1,),
        decoder_block_out_channels=(channels,) * 3,
        num_decoder_blocks=(1, 1, 1),
    )


def collect_latents(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    early: int,
    steps: int,
    guidance: float,
    batch: int = 128,
) -> torch.Tensor:
    """One generation per (prompt, seed): its x0 estimates after steps 1..``early`` and its
    final latents, all in the pipeline's (scaled) latent space, stacked along dim 0."""
    found = []
    recorder = StepRecorder(pipe.scheduler)

    def keep(pipe: DiffusionPipeline, step: int, t: object, tensors: dict) -> dict:
        if step < early:
            found.append(recorder.x0().clone())
        return {}

    for i in range(0, len(prompts), batch):
        with recorder:
            final = pipe(
                list(prompts[i : i + batch]),
                generator=[torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]],
                num_inference_steps=steps,
                guidance_scale=guidance,
                output_type="latent",
                callback_on_step_end=keep,
            ).images
        found.append(final)
    return torch.cat(found).float()


@torch.no_grad()
def vae_decode(pipe: DiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
    """The pipeline's VAE decode of (scaled) ``latents``, in [-1, 1]."""
    vae = pipe.vae
    parts = [vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample for z in latents.split(512)]
    return torch.cat(parts).float().clamp(-1, 1)


def train_preview(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    cfg: PreviewConfig,
    log: Log,
    seed: int,
    steps: int,
    guidance: float,
) -> AutoencoderTiny:
    """Distil ``pipe``'s VAE decoder (L1 + MSE on pixels) over generations of ``prompts``."""
    latents = collect_latents(pipe, prompts, seeds, cfg.early, steps, guidance)
    targets = vae_decode(pipe, latents)
    log(f"preview: {len(latents)} latents from {len(prompts)} generations")
    tiny = build_preview(latents.shape[1], cfg.channels)
    params = list(tiny.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * cosine_lr(step, cfg.steps, 30)
        idx = torch.randint(0, len(latents), (cfg.batch,), generator=gen)
        out = tiny.decode(latents[idx]).sample
        loss = F.l1_loss(out, targets[idx]) + F.mse_loss(out, targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"preview step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    return tiny.eval()
