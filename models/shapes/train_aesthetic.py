"""Stage 6: the LAION-layout aesthetic head on the shapes CLIP's image embeddings.

The head is ``winnow.scoring.aesthetic.AestheticHead`` (the class winnow's aesthetic scorer loads)
with the LAION key layout (``layers.0`` Linear, ``layers.1`` Dropout, ..., ``layers.6`` and
``layers.7`` Linear, no activations) and smaller widths. It is fitted on the embeddings
``winnow.scoring.clip`` computes from the saved CLIP checkpoint, i.e. exactly what the scorer will
feed it, and predicts ``quality(level) = 10 - 9 * level`` of the synthetic degradations
(1-10, higher = better, 10 = clean).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from winnow.models.shapes.data import Log
from winnow.models.shapes.degrade import quality
from winnow.models.shapes.evaluate import CPU, as_tensor, degraded_set
from winnow.scoring.aesthetic import AestheticHead
from winnow.scoring.clip import ClipSpec, encode_images


@dataclass(frozen=True)
class AestheticConfig:
    """Data size and optimiser settings."""

    n_images: int = 8000
    p_clean: float = 0.25
    epochs: int = 400
    lr: float = 3e-3


def build_head(dim: int) -> AestheticHead:
    """LAION layout, small widths: d->64, Dropout, 64->32, Dropout, 32->16, Dropout, 16->8, 8->1."""
    return AestheticHead(
        nn.Sequential(
            nn.Linear(dim, 64),
            nn.Dropout(0.2),
            nn.Linear(64, 32),
            nn.Dropout(0.2),
            nn.Linear(32, 16),
            nn.Dropout(0.1),
            nn.Linear(16, 8),
            nn.Linear(8, 1),
        )
    )


def train_aesthetic(
    clip: ClipSpec,
    images: np.ndarray,
    cfg: AestheticConfig,
    log: Log,
    seed: int,
) -> AestheticHead:
    """Fit the head on degraded copies of ``images`` (uint8 renders), full-batch Adam."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x, levels = degraded_set(images[: cfg.n_images], cfg.p_clean, rng)
    emb = encode_images(as_tensor(x), clip, CPU)
    target = torch.from_numpy(quality(levels)).float()
    head = build_head(emb.shape[1]).train()
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    t0 = time.time()
    for epoch in range(cfg.epochs):
        loss = F.mse_loss(head(emb), target)
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
