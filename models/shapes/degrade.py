"""Synthetic degradations with a severity level, the training signal of the aesthetic head.

``level`` is a float in [0, 1]: 0 leaves the image untouched, 1 is the strongest version of a
degradation. The quality label is ``quality(level) = 10 - 9 * level`` (1-10, higher = better,
10 = a clean render), the scale the aesthetic head predicts.
"""

from __future__ import annotations

import numpy as np

from winnow.models.shapes.world import BACKGROUNDS, COLOURS

KINDS: tuple[str, ...] = ("blur", "noise", "jitter", "occlusion", "distortion")


def quality(level: np.ndarray) -> np.ndarray:
    """Quality label on the aesthetic scale: 10 (clean) down to 1 (level 1)."""
    return 10.0 - 9.0 * np.asarray(level, dtype=np.float64)


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(k[i] * pad[:, i : i + img.shape[1]] for i in range(len(k)))
    return sum(k[i] * rows[i : i + img.shape[0]] for i in range(len(k)))


def _bilinear(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    sx, sy = np.clip(sx, 0, w - 1), np.clip(sy, 0, h - 1)
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def degrade(image: np.ndarray, level: float, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """Degrade a ``HxWx3`` uint8 image by ``level`` in [0, 1] (one ``kind``, random if None).

    - blur: Gaussian, sigma 0.4-2.4 px;
    - noise: Gaussian pixel noise, std up to 70 (0-255 units);
    - jitter: smooth colour blotches, amplitude up to 110;
    - occlusion: a block of another palette colour (not the shape's) over up to ~60% of
      the shape's box;
    - distortion: a wavy warp of up to 4 px that turns the shape into a wrong-looking one.
    """
    if level <= 0:
        return image.copy()
    kind = kind if kind is not None else KINDS[int(rng.integers(len(KINDS)))]
    img = image.astype(np.float64)
    h, w = img.shape[:2]
    if kind == "blur":
        out = _gaussian_blur(img, 0.4 + 2.0 * level)
    elif kind == "noise":
        out = img + rng.normal(0.0, 70.0 * level, size=img.shape)
    elif kind == "jitter":
        coarse = rng.normal(0.0, 1.0, size=(4, 4, 3))
        field = np.kron(coarse, np.ones((h // 4, w // 4, 1)))
        out = img + 110.0 * level * _gaussian_blur(field, 2.0)
    elif kind == "occlusion":
        border = np.concatenate([img[0], img[-1]])
        dist = np.linalg.norm(img - np.median(border, axis=0), axis=2)
        ys, xs = np.nonzero(dist > 0.5 * max(float(dist.max()), 1.0))
        if len(ys) == 0:
            ys, xs = np.array([h // 2]), np.array([w // 2])
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        frac = np.sqrt(0.6 * level)
        bh, bw = max(1, round((y1 - y0) * frac)), max(1, round((x1 - x0) * frac))
        oy = int(rng.integers(y0, max(y0 + 1, y1 - bh + 1)))
        ox = int(rng.integers(x0, max(x0 + 1, x1 - bw + 1)))
        # Any palette colour but the shape's own: a block of that colour would hide nothing.
        shape_rgb = np.median(img[ys, xs], axis=0)
        palette = [
            c
            for c in (*COLOURS.values(), *BACKGROUNDS.values())
            if np.linalg.norm(np.asarray(c, dtype=np.float64) - shape_rgb) > 40.0
        ]
        out = img.copy()
        out[oy : oy + bh, ox : ox + bw] = palette[int(rng.integers(len(palette)))]
    elif kind == "distortion":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        amp, period = 4.0 * level, float(rng.uniform(6.0, 12.0))
        px, py = rng.uniform(0, 2 * np.pi, size=2)
        sx = xx + amp * np.sin(2 * np.pi * yy / period + px)
        sy = yy + amp * np.sin(2 * np.pi * xx / period + py)
        out = _bilinear(img, sx, sy)
    else:
        raise ValueError(f"unknown degradation {kind!r}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def degrade_batch(images: np.ndarray, levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Degrade each image of ``(N, H, W, 3)`` uint8 by its level (random kind each)."""
    return np.stack([degrade(im, float(lv), rng) for im, lv in zip(images, levels, strict=True)])
