"""Tensor helpers shared by the training stages: seeding, pixel conversions, CLIP inputs."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from winnow.models.shapes.world import Scene, all_captions, all_scenes, render_batch

FULL_CAPTIONS: list[str] = all_captions(short=False)  # 69, index = scene index
SHORT_CAPTIONS: list[str] = all_captions(short=True)[len(FULL_CAPTIONS) :]  # 18
SCENE_INDEX: dict[tuple[str, str, str], int] = {
    (s.colour, s.shape, s.background or ""): i for i, s in enumerate(all_scenes())
}
SHORT_OF_FULL: list[int] = [SHORT_CAPTIONS.index(f"a {s.colour} {s.shape}") for s in all_scenes()]

Log = Callable[[str], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scene_ids(scenes: list[Scene]) -> np.ndarray:
    """Index (0-68) of each fully specified scene in ``all_scenes()``."""
    return np.asarray([SCENE_INDEX[(s.colour, s.shape, s.background or "")] for s in scenes])


def render_pool(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random renders (uint8 ``(n, 32, 32, 3)``) and their scene ids (0-68)."""
    images, scenes = render_batch(n, np.random.default_rng(seed))
    return images, scene_ids(scenes)


def to_signed(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [-1, 1] (VAE space)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_signed(x: torch.Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, 3)``."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def clip_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 32, 32, 3)`` -> normalised float ``(N, 3, 32, 32)``: what open_clip's
    preprocess (and ``winnow.scoring.clip.preprocess``) makes of 32x32 images with the default
    OpenAI mean/std, which the shapes CLIP's config keeps. Training only; inference goes
    through ``winnow.scoring.clip``."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up then cosine decay to 5%."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + float(np.cos(np.pi * t)))
