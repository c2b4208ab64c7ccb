"""The shapes world: renderer invariants, caption grammar, oracle accuracy, degradations."""

from __future__ import annotations

import numpy as np
import pytest

from winnow.models.shapes import oracle
from winnow.models.shapes.degrade import KINDS, degrade, quality
from winnow.models.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    MAX_SPAN,
    MIN_SPAN,
    SHAPES,
    SIZE,
    all_captions,
    all_scenes,
    caption,
    parse_caption,
    random_scene,
    render,
    render_batch,
    sample_layout,
    shape_mask,
)


def test_oracle_reads_clean_renders() -> None:
    images, scenes = render_batch(600, np.random.default_rng(7))
    right = [
        oracle.read(im) == (s.colour, s.shape, s.background) for im, s in zip(images, scenes, strict=True)
    ]
    assert np.mean(right) >= 0.99


def test_oracle_unreadable_on_blank_and_noise() -> None:
    blank = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert oracle.read(blank) == oracle.UNREADABLE
    assert oracle.read(noise) == oracle.UNREADABLE


def test_oracle_ignores_faint_background_texture(monkeypatch: pytest.MonkeyPatch) -> None:
    # A small triangle with interior background texture up to 8% of the way to the shape
    # colour (what decoders leave): without the noise floor the texture adds ~half the
    # triangle's area to the coverage map and the template fit fails.
    alpha = shape_mask("triangle", 16.0, 16.0, 0.3 * SIZE)
    texture = np.zeros((SIZE, SIZE))
    texture[1:-1, 1:-1] = np.random.default_rng(0).uniform(0.0, 0.08, (SIZE - 2, SIZE - 2))
    a = np.maximum(alpha, texture)[..., None]
    fg, bg = np.asarray(COLOURS["green"], float), np.asarray(BACKGROUNDS["black"], float)
    img = np.rint(a * fg + (1 - a) * bg).astype(np.uint8)
    assert oracle.read(img) == ("green", "triangle", "black")
    monkeypatch.setattr(oracle, "NOISE_FLOOR", 0.0)
    assert oracle.read(img) == oracle.UNREADABLE


def test_adherence() -> None:
    img = render("red", "circle", "black", np.random.default_rng(1))
    assert oracle.adherence(img, "a red circle on a black background")
    assert oracle.adherence(img, "a red circle")
    assert not oracle.adherence(img, "a red square")
    assert not oracle.adherence(img, "a red circle on a white background")


def test_captions_parse_round_trip() -> None:
    captions = all_captions()
    assert len(captions) == len(set(captions)) == 69 + 18
    for text in captions:
        colour, shape, background = parse_caption(text)
        assert caption(colour, shape, background) == text
    assert parse_caption("  A Blue  Triangle ") == ("blue", "triangle", None)


@pytest.mark.parametrize(
    "bad", ["a red hexagon", "a pink circle", "a white circle on a white background", "hello"]
)
def test_parse_caption_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_caption(bad)


def test_layout_spans_and_stays_inside() -> None:
    rng = np.random.default_rng(3)
    for _ in range(2000):
        cx, cy, span = sample_layout(rng)
        assert MIN_SPAN * SIZE <= span <= MAX_SPAN * SIZE
        for c in (cx, cy):
            assert c - span / 2 >= 1.0 and c + span / 2 <= SIZE - 1.0


def test_render_invariants() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        s = random_scene(rng)
        img = render(s.colour, s.shape, s.background, rng)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == border[0]).all()  # background all round: the shape is inside
        assert np.abs(border[0].astype(int) - BACKGROUNDS[s.background]).max() <= 8
        ys, xs = np.nonzero((img != border[0]).any(axis=2))
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / SIZE
        assert MIN_SPAN - 0.07 <= extent <= MAX_SPAN + 0.07


def test_never_same_colour() -> None:
    scenes = all_scenes()
    assert len(scenes) == len(COLOURS) * len(SHAPES) * len(BACKGROUNDS) - len(SHAPES)
    assert all(COLOURS[s.colour] != BACKGROUNDS[s.background] for s in scenes)
    with pytest.raises(ValueError):
        render("white", "square", "white", np.random.default_rng(0))


def test_degrade_levels() -> None:
    rng = np.random.default_rng(5)
    img = render("blue", "triangle", "beige", rng)
    assert (degrade(img, 0.0, rng) == img).all()
    for kind in KINDS:
        out = degrade(img, 0.8, rng, kind)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not (out == img).all()
    assert quality(np.array([0.0, 1.0])).tolist() == [10.0, 1.0]


def test_occlusion_always_hides_part_of_the_shape() -> None:
    # A block of the shape's own colour inside a square would change nothing while the label
    # still says "degraded"; the occluder must differ visibly from the shape, at every level.
    rng = np.random.default_rng(11)
    for colour in COLOURS:
        img = render(colour, "square", "black" if colour != "white" else "gray", rng)
        for level in (0.2, 0.6, 1.0):
            for _ in range(5):
                out = degrade(img, level, rng, "occlusion")
                assert np.abs(out.astype(int) - img.astype(int)).max() > 30
