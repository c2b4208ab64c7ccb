"""Stage 3: the tiny open_clip CLIP that scores shapes images against captions.

Training is contrastive against *every* caption of the world at once (69 full + 18 short),
so each image meets all its hard negatives (same shape other colour, same colour other shape,
other background) every step; a text->image term over the batch calibrates scores across
images. Images are clean renders, VAE reconstructions and samples of the trained diffusion
model labelled by the oracle (so the CLIP knows generated-looking, soft-edged shapes), plus
degraded renders whose caption weight falls with the degradation level. A throw-away linear
probe asks the image embedding to encode the degradation level linearly, which is what the
LAION-style (linear) aesthetic head reads later.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from winnow.models.shapes.data import (
    FULL_CAPTIONS,
    SHORT_CAPTIONS,
    SHORT_OF_FULL,
    Log,
    clip_input,
    cosine_lr,
)
from winnow.models.shapes.degrade import degrade_batch

CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 32,
        "layers": 4,
        "width": 128,
        "head_width": 32,
        "mlp_ratio": 2.0,
        "patch_size": 4,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 3,
    },
}


@dataclass(frozen=True)
class ClipConfig:
    """Training budget and batch mix (fractions of ``batch``; the rest are clean renders)."""

    steps: int = 1100
    batch: int = 128
    lr: float = 1e-3
    frac_recon: float = 0.15
    frac_generated: float = 0.25
    frac_degraded: float = 0.35
    probe_weight: float = 30.0


def build_clip() -> open_clip.CLIP:
    """The open_clip ``CLIP`` described by ``CLIP_CONFIG`` (random init)."""
    return open_clip.CLIP(**CLIP_CONFIG)


def save_clip(model: open_clip.CLIP, out_dir: Path, name: str = "shapes-clip") -> None:
    """Write ``{name}.json`` (open_clip model config) and ``{name}.safetensors`` (fp16)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(CLIP_CONFIG, indent=2) + "\n")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / f"{name}.safetensors"))


def train_clip(
    renders: tuple[np.ndarray, np.ndarray],
    recons: tuple[np.ndarray, np.ndarray],
    generated: tuple[np.ndarray, np.ndarray],
    cfg: ClipConfig,
    device: torch.device,
    log: Log,
    seed: int,
) -> open_clip.CLIP:
    """Train on (uint8 images, scene ids 0-68) pools of renders, reconstructions, samples."""
    rng = np.random.default_rng(seed)
    model = build_clip().to(device)
    probe = torch.nn.Linear(CLIP_CONFIG["embed_dim"], 1).to(device)
    tokens = open_clip.tokenize(FULL_CAPTIONS + SHORT_CAPTIONS).to(device)
    n_full = len(FULL_CAPTIONS)
    short_of_full = torch.tensor(SHORT_OF_FULL, device=device)
    params = list(model.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    n_rec = int(cfg.batch * cfg.frac_recon) if len(recons[0]) else 0
    n_gen = int(cfg.batch * cfg.frac_generated) if len(generated[0]) else 0
    n_deg = int(cfg.batch * cfg.frac_degraded)
    n_clean = cfg.batch - n_rec - n_gen - n_deg
    t0 = time.time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * cosine_lr(step, cfg.steps, 50)
        parts_x, parts_y = [], []
        for (pool_x, pool_y), n in ((renders, n_clean + n_deg), (recons, n_rec), (generated, n_gen)):
            if n:
                idx = rng.integers(0, len(pool_x), n)
                parts_x.append(pool_x[idx])
                parts_y.append(pool_y[idx])
        x, y = np.concatenate(parts_x), np.concatenate(parts_y)
        level = np.zeros(len(x))
        level[n_clean : n_clean + n_deg] = rng.uniform(0.0, 1.0, n_deg)
        x[n_clean : n_clean + n_deg] = degrade_batch(
            x[n_clean : n_clean + n_deg], level[n_clean : n_clean + n_deg], rng
        )
        # Captions still apply to lightly degraded images, hardly to heavily degraded ones.
        w = torch.from_numpy((1.0 - level) ** 2).float().to(device)
        images = clip_input(x).to(device)
        target = torch.from_numpy(y).long().to(device)

        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100.0)
        logits = scale * img @ txt.T  # (B, 87)
        loss_full = (F.cross_entropy(logits[:, :n_full], target, reduction="none") * w).mean()
        loss_short = (F.cross_entropy(logits[:, n_full:], short_of_full[target], reduction="none") * w).mean()
        # text -> image: each caption present in the batch against all batch images.
        present = torch.unique(target)
        t2i = logits[:, present].T  # (P, B)
        pos = (target[None, :] == present[:, None]).float() * w[None, :]
        pos = pos / pos.sum(1, keepdim=True).clamp(min=1e-6)
        loss_t2i = -(pos * F.log_softmax(t2i, dim=1)).sum(1).mean()
        q = torch.from_numpy(level).float().to(device)
        loss_probe = F.mse_loss(probe(img).squeeze(1), q)
        loss = loss_full + 0.5 * loss_short + 0.5 * loss_t2i + cfg.probe_weight * loss_probe
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            acc = (logits[:n_clean, :n_full].argmax(1) == target[:n_clean]).float().mean()
            log(
                f"clip step {step} loss {loss.item():.3f} probe {loss_probe.item():.4f} "
                f"clean-acc {acc.item():.3f} scale {scale.item():.1f} {time.time() - t0:.0f}s"
            )
    return model.eval()
