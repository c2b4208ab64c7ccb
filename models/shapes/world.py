"""The shapes world: palettes, the procedural renderer and the caption grammar.

An image is ``SIZE x SIZE`` (32x32) RGB, uint8, showing one filled shape (``circle``,
``square`` or ``triangle``) of one colour on a plain background of another colour. The shape
spans 30-70% of the side and lies fully inside the canvas (at least one pixel of background
on every side). Colours carry a small per-image jitter and edges are anti-aliased by 4x
supersampling.

Captions are ``"a {colour} {shape} on a {background} background"`` or ``"a {colour} {shape}"``
(any background).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SIZE = 32  # pixels per side
SUPERSAMPLE = 4  # anti-aliasing factor of the renderer
MIN_SPAN, MAX_SPAN = 0.30, 0.70  # shape extent as a fraction of the side
COLOUR_JITTER = 8  # max per-channel jitter of nominal colours, in 0-255 units

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (145, 60, 195),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
    "beige": (225, 210, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Scene:
    """What one image shows; ``background`` may be ``None`` only in short captions."""

    colour: str
    shape: str
    background: str | None


def is_valid(colour: str, shape: str, background: str | None) -> bool:
    """True if the triple is in the world (known names, shape colour != background colour)."""
    if colour not in COLOURS or shape not in SHAPES:
        return False
    if background is None:
        return True
    return background in BACKGROUNDS and COLOURS[colour] != BACKGROUNDS[background]


def all_scenes() -> list[Scene]:
    """Every fully specified scene (69 of them), in a fixed order."""
    return [Scene(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS if is_valid(c, s, b)]


def caption(colour: str, shape: str, background: str | None = None) -> str:
    """The caption for a scene; the short form when ``background`` is ``None``."""
    if background is None:
        return f"a {colour} {shape}"
    return f"a {colour} {shape} on a {background} background"


def all_captions(short: bool = True) -> list[str]:
    """All full captions (69), then all short captions (18) when ``short``."""
    out = [caption(s.colour, s.shape, s.background) for s in all_scenes()]
    if short:
        out += [caption(c, s) for c in COLOURS for s in SHAPES]
    return out


_CAPTION_RE = re.compile(r"^an? (\w+) (\w+)(?: on an? (\w+) background)?\.?$")


def parse_caption(text: str) -> tuple[str, str, str | None]:
    """Parse a caption into ``(colour, shape, background | None)``.

    Case and surrounding whitespace are ignored. Raises ``ValueError`` for text outside the
    caption grammar or naming things not in the world.
    """
    m = _CAPTION_RE.match(" ".join(text.strip().lower().split()))
    if m is None:
        raise ValueError(f"not a shapes caption: {text!r}")
    colour, shape, background = m.group(1), m.group(2), m.group(3)
    if not is_valid(colour, shape, background):
        raise ValueError(f"not a scene of the shapes world: {text!r}")
    return colour, shape, background


def random_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random fully specified scene."""
    scenes = all_scenes()
    return scenes[int(rng.integers(len(scenes)))]


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> np.ndarray:
    noise = rng.integers(-amount, amount + 1, size=3) if amount > 0 else np.zeros(3)
    return np.clip(np.asarray(rgb, dtype=np.float64) + noise, 0, 255)


def shape_mask(
    shape: str,
    cx: float,
    cy: float,
    span: float,
    size: int = SIZE,
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """Anti-aliased coverage (float64 in [0, 1], ``size x size``) of one shape.

    ``(cx, cy)`` is the centre of the shape's bounding box and ``span`` its side, in pixels
    (pixel ``i`` covers ``[i, i+1)``). Triangles point up, with base and height ``span``.
    """
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    h = span / 2.0
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= h * h
    elif shape == "square":
        inside = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    elif shape == "triangle":
        top, bottom = cy - h, cy + h
        t = (y - top) / span  # 0 at the apex, 1 at the base
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= t * h)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def sample_layout(rng: np.random.Generator, size: int = SIZE) -> tuple[float, float, float]:
    """Random ``(cx, cy, span)`` in pixels: span uniform in 30-70% of ``size``, centre such
    that the shape's box keeps at least one pixel of background on every side."""
    span = float(rng.uniform(MIN_SPAN, MAX_SPAN)) * size
    lo, hi = 1.0 + span / 2.0, size - 1.0 - span / 2.0
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), span


def render(
    colour: str,
    shape: str,
    background: str,
    rng: np.random.Generator,
    size: int = SIZE,
    jitter: int = COLOUR_JITTER,
) -> np.ndarray:
    """Render one scene as a ``size x size x 3`` uint8 array.

    Span is uniform in 30-70% of the side, position uniform such that the shape keeps at
    least one pixel of background on every side; colours get +-``jitter`` per channel.
    """
    if not is_valid(colour, shape, background) or background is None:
        raise ValueError(f"invalid scene {(colour, shape, background)}")
    cx, cy, span = sample_layout(rng, size)
    alpha = shape_mask(shape, cx, cy, span, size)[..., None]
    fg = _jitter(COLOURS[colour], rng, jitter)
    bg = _jitter(BACKGROUNDS[background], rng, jitter)
    img = alpha * fg + (1.0 - alpha) * bg
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Render a scene; a missing background is drawn at random (never the shape's colour)."""
    background = scene.background
    if background is None:
        options = [b for b in BACKGROUNDS if is_valid(scene.colour, scene.shape, b)]
        background = options[int(rng.integers(len(options)))]
    return render(scene.colour, scene.shape, background, rng)


def render_batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Scene]]:
    """``n`` random scenes: images ``(n, SIZE, SIZE, 3)`` uint8 and their scenes."""
    scenes = [random_scene(rng) for _ in range(n)]
    images = np.stack([render_scene(s, rng) for s in scenes])
    return images, scenes
