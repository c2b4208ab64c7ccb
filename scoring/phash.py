"""Perceptual hashes for ``select.dedup.phash``: imagehash's pHash of each candidate's image
(the DCT of a 32x32 greyscale thumbnail, its 8x8 low frequencies compared with their
median: 64 bits). Two images that look alike differ in few bits, however their CLIP
embeddings compare.

``imagehash`` comes with the optional ``dedup`` extra; this module imports without it, and
hashing without it is a one-line error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from winnow.models.errors import WinnowError
from winnow.models.generator import to_uint8

BITS = 64  # pHash's default hash_size 8: 8 x 8 bits


class ImagehashMissingError(WinnowError):
    """``select.dedup.phash`` without the ``imagehash`` package installed."""


def _imagehash() -> Any:
    try:
        import imagehash
    except ImportError as err:
        raise ImagehashMissingError(
            f"select.dedup.phash needs the imagehash package ({err.name or err} is not installed): "
            "pip install -e '.[dedup]', or unset select.dedup.phash"
        ) from None
    return imagehash


def require() -> None:
    """Raise ``ImagehashMissingError`` now if hashing would (before a run makes anything)."""
    _imagehash()


def perceptual_hashes(images: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) images in [0, 1] (any device) -> (n, 64) bool pHash bits of their 8-bit
    pixels (as saved); the Hamming distance of two images is the number of bits that differ."""
    imagehash = _imagehash()
    pixels = to_uint8(images).numpy()
    out = np.zeros((len(pixels), BITS), dtype=bool)
    for i, p in enumerate(pixels):
        out[i] = imagehash.phash(Image.fromarray(p)).hash.reshape(-1)
    return out
