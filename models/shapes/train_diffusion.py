"""Stage 2: the UNet and CLIP text encoder of the shapes diffusion model, trained jointly.

Epsilon prediction on VAE latents (8x8x4) with Stable Diffusion's noise schedule; 10% of
captions are dropped (empty prompt) so classifier-free guidance works.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from winnow.models.assemble import sd_pipeline
from winnow.models.shapes.data import (
    FULL_CAPTIONS,
    SHORT_CAPTIONS,
    SHORT_OF_FULL,
    Log,
    cosine_lr,
)
from winnow.models.shapes.train_vae import encode_posterior

TEXT_DIM = 64  # text encoder width = UNet cross-attention dim
BOS, EOS = 49406, 49407  # CLIP's start/end-of-text token ids


@dataclass(frozen=True)
class DiffusionConfig:
    """Training budget and settings (steps of ``batch`` latents)."""

    steps: int = 1000
    batch: int = 128
    lr: float = 6e-4
    p_short: float = 0.3  # caption "a red circle" instead of the full caption
    p_uncond: float = 0.1  # empty caption, for classifier-free guidance
    ema_decay: float = 0.995


def build_unet() -> UNet2DConditionModel:
    """~3.9M-parameter UNet on 8x8x4 latents: (64, 128) channels, cross-attention at 4x4."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_text_encoder() -> CLIPTextModel:
    """A 2-layer, 64-wide CLIPTextModel over CLIP's 49,408-token vocabulary (77 positions)."""
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    return CLIPTextModel(cfg)


def build_train_scheduler() -> DDPMScheduler:
    """Stable Diffusion's training schedule (scaled-linear betas, 1000 steps, epsilon)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def build_sample_scheduler() -> DPMSolverMultistepScheduler:
    """The scheduler shipped in the pipeline: DPM-Solver++ (2M) over the training schedule."""
    return DPMSolverMultistepScheduler.from_config(build_train_scheduler().config)


def make_pipeline(
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
) -> StableDiffusionPipeline:
    """Assemble the standard pipeline (no safety checker, DPM-Solver++ scheduler)."""
    return sd_pipeline(unet, vae, text_encoder, tokenizer, build_sample_scheduler())


def train_diffusion(
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    images: np.ndarray,
    scene_ids: np.ndarray,
    cfg: DiffusionConfig,
    device: torch.device,
    log: Log,
    seed: int,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Train UNet + text encoder on ``images`` (uint8) captioned by ``scene_ids`` (0-68).

    Returns the EMA weights of both models (eval mode).
    """
    gen = torch.Generator().manual_seed(seed)
    unet, text_encoder = build_unet().to(device), build_text_encoder().to(device)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    sched = build_train_scheduler()
    alphas = sched.alphas_cumprod.to(device)

    # Caption table: 69 full, 18 short, then the empty prompt.
    texts = FULL_CAPTIONS + SHORT_CAPTIONS + [""]
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    short_of_full = torch.tensor(SHORT_OF_FULL) + len(FULL_CAPTIONS)
    empty = len(texts) - 1

    # Latents once (posterior mean and std); a fresh posterior sample every step.
    mean, std = encode_posterior(vae.eval(), images)
    ids = torch.from_numpy(scene_ids).long()
    sf = float(vae.config.scaling_factor)
    log(f"diffusion: {len(mean)} latents, unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M")

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    t0 = time.time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * cosine_lr(step, cfg.steps, 100)
        idx = torch.randint(0, len(mean), (cfg.batch,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf
        u = torch.rand(cfg.batch, generator=gen)
        cap = torch.where(u < cfg.p_short, short_of_full[ids[idx]], ids[idx])
        cap = torch.where(u > 1.0 - cfg.p_uncond, torch.full_like(cap, empty), cap)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        z0, noise, t, cap = z0.to(device), noise.to(device), t.to(device), cap.to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(tokens[cap])[0]
        loss = F.mse_loss(unet(zt, t, cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # EMA from step 0 with a warm-up so early weights do not dominate.
        d = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for src, dst in ((unet, ema_unet), (text_encoder, ema_text)):
                for p, q in zip(src.parameters(), dst.parameters(), strict=True):
                    q.lerp_(p, 1 - d)
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"diffusion step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    return ema_unet, ema_text
