"""Stage 1: the AutoencoderKL (32x32x3 <-> 8x8x4 latents) of the shapes diffusion model."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from winnow.models.shapes.data import Log, cosine_lr, to_signed


@dataclass(frozen=True)
class VaeConfig:
    """Training budget and optimiser settings (steps of ``batch`` images)."""

    steps: int = 800
    batch: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6
    edge_weight: float = 4.0  # extra L1 weight on pixels next to an edge (see recon_loss)


def build_vae() -> AutoencoderKL:
    """A ~1M-parameter AutoencoderKL: 3 blocks (32, 64, 64), 4x down, 4 latent channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def _edge_map(x: torch.Tensor) -> torch.Tensor:
    """1 where a pixel differs from a 4-neighbour (colour edges), else 0; shape (N,1,H,W)."""
    g = torch.zeros_like(x[:, :1])
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True) > 0.05
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True) > 0.05
    g[..., :, 1:] += dx
    g[..., :, :-1] += dx
    g[..., 1:, :] += dy
    g[..., :-1, :] += dy
    return (g > 0).float()


def recon_loss(rec: torch.Tensor, x: torch.Tensor, edge_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 (x ``1 + edge_weight`` on pixels next to an edge, to keep corners) + MSE; and the L1."""
    l1 = ((rec - x).abs() * (1.0 + edge_weight * _edge_map(x))).mean()
    return l1 + F.mse_loss(rec, x), l1


def train_vae(images: np.ndarray, cfg: VaeConfig, device: torch.device, log: Log, seed: int) -> AutoencoderKL:
    """Train on ``images`` (uint8 ``(N, 32, 32, 3)``); sets ``scaling_factor`` = 1/latent std."""
    gen = torch.Generator().manual_seed(seed)
    vae = build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    data = to_signed(images)
    t0 = time.time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * cosine_lr(step, cfg.steps, 50)
        idx = torch.randint(0, len(data), (cfg.batch,), generator=gen)
        x = data[idx].to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        rec_loss, l1 = recon_loss(vae.decode(z).sample, x, cfg.edge_weight)
        loss = rec_loss + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} l1 {l1.item():.4f} {time.time() - t0:.0f}s")
    vae.eval()
    with torch.no_grad():
        z = torch.cat(
            [vae.encode(data[i : i + 256].to(device)).latent_dist.mean for i in range(0, 2048, 256)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    log(f"vae latent std {z.std().item():.3f} -> scaling_factor {vae.config.scaling_factor:.4f}")
    return vae


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Round-trip uint8 images through the VAE (posterior mean), returning uint8 images."""
    from winnow.models.shapes.data import from_signed

    device = next(vae.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = to_signed(images[i : i + batch]).to(device)
        out.append(from_signed(vae.decode(vae.encode(x).latent_dist.mean).sample))
    return np.concatenate(out)


@torch.no_grad()
def encode_posterior(
    vae: AutoencoderKL, images: np.ndarray, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (unscaled latents, ``(N, 4, 8, 8)`` each, on the CPU) of uint8
    ``images``: computed once by the stages that keep the encoder frozen."""
    device = next(vae.parameters()).device
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(to_signed(images[i : i + batch]).to(device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder-only fine-tuning budget (the encoder, hence the latent space, stays fixed)."""

    steps: int = 500  # per cycle
    cycles: int = 1  # cosine cycles with warm restarts (fresh optimiser, next seed)
    batch: int = 32
    lr: float = 5e-4
    edge_weight: float = 8.0


def finetune_decoder(
    vae: AutoencoderKL, images: np.ndarray, cfg: DecoderConfig, device: torch.device, log: Log, seed: int
) -> AutoencoderKL:
    """Sharpen small shapes and corners by training only ``post_quant_conv`` + ``decoder``.

    The encoder is frozen, so latents (and a diffusion model trained on them) are unchanged;
    this is why it runs after the diffusion stage, and why the posteriors are encoded once.
    Cycle ``c`` uses seed ``seed + c``.
    """
    vae = vae.to(device).eval()
    mean, std = encode_posterior(vae, images)
    data = to_signed(images)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    t0 = time.time()
    for cycle in range(cfg.cycles):
        gen = torch.Generator().manual_seed(seed + cycle)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * cosine_lr(step, cfg.steps, 30)
            idx = torch.randint(0, len(data), (cfg.batch,), generator=gen)
            x = data[idx].to(device)
            z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)).to(device)
            loss, l1 = recon_loss(vae.decode(z).sample, x, cfg.edge_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 100 == 0 or step == cfg.steps - 1:
                log(
                    f"decoder cycle {cycle} step {step} loss {loss.item():.4f} l1 {l1.item():.4f} "
                    f"{time.time() - t0:.0f}s"
                )
    for p in vae.parameters():
        p.requires_grad_(True)
    return vae.eval()
