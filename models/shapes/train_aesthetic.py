"""Stage 4: the LAION-layout aesthetic head on the shapes CLIP's image embeddings.

Same key layout as the LAION improved aesthetic predictor (``layers.0`` Linear, ``layers.1``
Dropout, ..., ``layers.6`` and ``layers.7`` Linear, no activations) with smaller widths. It
reads L2-normalised image embeddings and predicts ``quality(level) = 10 - 9 * level`` of the
synthetic degradations (1-10, higher = better, 10 = clean).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from models.shapes.data import Log, clip_input
from models.shapes.degrade import degrade_batch, quality


@dataclass(frozen=True)
class AestheticConfig:
    """Data size and optimiser settings."""

    n_images: int = 6000
    p_clean: float = 0.25
    epochs: int = 400
    lr: float = 3e-3


class AestheticHead(nn.Module):
    """LAION-layout MLP: d->64, Dropout, 64->32, Dropout, 32->16, Dropout, 16->8, 8->1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 64),
            nn.Dropout(0.2),
            nn.Linear(64, 32),
            nn.Dropout(0.2),
            nn.Linear(32, 16),
            nn.Dropout(0.1),
            nn.Linear(16, 8),
            nn.Linear(8, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Score ``(N, dim)`` L2-normalised embeddings -> ``(N, 1)``, about 1-10."""
        return self.layers(embedding)


@torch.no_grad()
def embed_images(model: open_clip.CLIP, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings ``(N, embed_dim)`` of uint8 ``(N, 32, 32, 3)`` images."""
    device = next(model.parameters()).device
    out = [
        F.normalize(model.encode_image(clip_input(images[i : i + batch]).to(device)), dim=-1)
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).float().cpu()


def degraded_set(
    images: np.ndarray, p_clean: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Degrade each image at a random level (0 with probability ``p_clean``, else U(0, 1))."""
    levels = rng.uniform(0.0, 1.0, len(images))
    levels[rng.uniform(size=len(images)) < p_clean] = 0.0
    return degrade_batch(images, levels, rng), levels


def train_aesthetic(
    model: open_clip.CLIP,
    images: np.ndarray,
    cfg: AestheticConfig,
    log: Log,
    seed: int,
) -> AestheticHead:
    """Fit the head on degraded copies of ``images`` (uint8 renders), full-batch Adam."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x, levels = degraded_set(images[: cfg.n_images], cfg.p_clean, rng)
    emb = embed_images(model, x)
    target = torch.from_numpy(quality(levels)).float()
    head = AestheticHead(emb.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    t0 = time.time()
    for epoch in range(cfg.epochs):
        loss = F.mse_loss(head(emb).squeeze(1), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if epoch % 100 == 0 or epoch == cfg.epochs - 1:
            log(f"aesthetic epoch {epoch} mse {loss.item():.3f} {time.time() - t0:.0f}s")
    return head.eval()


def save_aesthetic(head: AestheticHead, path: Path) -> None:
    """Save as fp16 safetensors with LAION-style keys (``layers.0.weight`` ...)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path))
