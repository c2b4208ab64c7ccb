"""The exact oracle: read a shapes image back into ``(colour, shape, background)``.

How it reads (no learning involved):

1. background colour = per-channel median of the one-pixel border ring (the renderer always
   leaves background there), matched to the nearest background in the palette;
2. shape colour = median of the pixels farthest from the background, matched to the nearest
   shape colour; a soft coverage map ``alpha`` in [0, 1] is the projection of every pixel onto
   the background->shape colour segment;
3. shape = the ideal circle / square / triangle with the same area and centroid as ``alpha``
   that disagrees least with it (L1 over the image, relative to the area).

Anything that fails a sanity bound (no shape, colours far from every palette entry, a shape
that matches no template well, a shape touching the border) is ``"unreadable"``.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
from PIL import Image

from winnow.models.shapes.world import BACKGROUNDS, COLOURS, SHAPES, SIZE, parse_caption, shape_mask

UNREADABLE: Final = "unreadable"
Reading = tuple[str, str, str] | Literal["unreadable"]

MAX_BACKGROUND_DIST = 60.0  # RGB distance (0-255 units) to the nearest background colour
MAX_COLOUR_DIST = 75.0  # RGB distance to the nearest shape colour
MIN_CONTRAST = 30.0  # a shape must differ from the background by at least this much
MAX_TEMPLATE_ERROR = 0.45  # L1(alpha - template) / area of the best template
MIN_AREA_FRAC, MAX_AREA_FRAC = 0.02, 0.6  # shape area as a fraction of the image area
# Coverage under this is background texture, not shape. Without it, the faint texture a VAE
# decoder leaves over the whole background (coverage up to ~0.14 per pixel) adds up to a third
# of a small triangle's area, and the template fit fails on a plainly readable triangle.
NOISE_FLOOR = 0.1


def _as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    if arr.shape[0] != SIZE or arr.shape[1] != SIZE:
        arr = np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((SIZE, SIZE), Image.BOX))
    return arr.astype(np.float64)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    names = list(palette)
    dists = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    i = int(np.argmin(dists))
    return names[i], float(dists[i])


def coverage(image: np.ndarray | Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Soft shape coverage ``alpha`` (HxW in [0, 1]) with the measured shape and background
    colours (RGB float, 0-255), or ``None`` when no shape stands out from the background."""
    img = _as_array(image)
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(img - bg, axis=2)
    ref = float(np.percentile(dist, 99))
    if ref < MIN_CONTRAST:
        return None
    fg = np.median(img[dist >= 0.75 * ref], axis=0)
    axis = fg - bg
    alpha = np.clip(((img - bg) @ axis) / float(axis @ axis), 0.0, 1.0)
    return np.where(alpha >= NOISE_FLOOR, alpha, 0.0), fg, bg


def _best_shape(alpha: np.ndarray) -> tuple[str, float]:
    """Best-matching shape and its relative L1 error (0 = perfect)."""
    area = float(alpha.sum())
    ys, xs = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]] + 0.5
    mx, my = float((alpha * xs).sum() / area), float((alpha * ys).sum() / area)
    spans = {
        "circle": 2.0 * np.sqrt(area / np.pi),
        "square": np.sqrt(area),
        "triangle": np.sqrt(2.0 * area),
    }
    best, best_err = SHAPES[0], np.inf
    for shape in SHAPES:
        span = float(spans[shape])
        # A triangle's centroid sits a sixth of its height below its bounding box's centre.
        cy = my - span / 6.0 if shape == "triangle" else my
        err = float(np.abs(alpha - shape_mask(shape, mx, cy, span, alpha.shape[0])).sum()) / area
        if err < best_err:
            best, best_err = shape, err
    return best, best_err


def read(image: np.ndarray | Image.Image) -> Reading:
    """Read an image (HxWx3 uint8 array or PIL image; resized to 32x32 if needed).

    Returns ``(colour, shape, background)`` or ``"unreadable"``.
    """
    found = coverage(image)
    if found is None:
        return UNREADABLE
    alpha, fg, bg = found
    background, bg_dist = _nearest(bg, BACKGROUNDS)
    if bg_dist > MAX_BACKGROUND_DIST:
        return UNREADABLE
    palette = {k: v for k, v in COLOURS.items() if v != BACKGROUNDS[background]}
    colour, fg_dist = _nearest(fg, palette)
    if fg_dist > MAX_COLOUR_DIST:
        return UNREADABLE
    area_frac = float(alpha.sum()) / alpha.size
    if not MIN_AREA_FRAC <= area_frac <= MAX_AREA_FRAC:
        return UNREADABLE
    shape, err = _best_shape(alpha)
    if err > MAX_TEMPLATE_ERROR:
        return UNREADABLE
    return colour, shape, background


def adherence(image: np.ndarray | Image.Image, text: str) -> bool:
    """True if the oracle reads every attribute the caption names (background if given)."""
    colour, shape, background = parse_caption(text)
    got = read(image)
    if got == UNREADABLE:
        return False
    if (got[0], got[1]) != (colour, shape):
        return False
    return background is None or got[2] == background
