"""A reduced-size run of the shapes quality benchmark: the bars of bench/quality.py, with margin."""

import pytest

from winnow.models.sources import BUNDLED

pytestmark = pytest.mark.skipif(
    not (BUNDLED["shapes-sd"] / "model_index.json").exists(),
    reason="shapes weights not built (make train-shapes)",
)


def test_selection_beats_chance_and_reaches_the_bar(tmp_path):
    from bench.quality import curation

    q = curation(prompts=16, n=8, workdir=tmp_path)
    assert 0.3 <= q["single"] <= 0.9  # full size: 40-85% over all 69 captions
    assert q["best_of_8"] >= 0.85  # full size: >= 93%
    assert q["best_of_8"] >= q["single"] + 0.05  # full size: >= 10 points above random_of_8
    assert q["best_of_8"] >= q["worst_of_8"] + 0.1
    assert q["oracle_any_of_8"] >= q["best_of_8"]


def test_bundled_models_quality():
    from bench.quality import models_quality

    q = models_quality(renders=300)
    assert q["vae_roundtrip"] >= 0.94  # full size: >= 98% over 1,000 renders
    assert q["clip_zero_shot"] >= 0.96  # full size: >= 98%
    assert q["aesthetic_spearman"] >= 0.75  # full size: >= 0.8
