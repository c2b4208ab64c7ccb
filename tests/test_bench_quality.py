"""A reduced-size run of the shapes quality benchmark: the bars of bench/quality.py, with margin."""

import pytest

from models.sources import BUNDLED

pytestmark = pytest.mark.skipif(
    not (BUNDLED["shapes-sd"] / "model_index.json").exists(),
    reason="shapes weights not built (make train-shapes)",
)


def test_selection_beats_chance_and_reaches_the_bar(tmp_path):
    from bench.quality import curation

    q = curation(prompts=16, n=8, workdir=tmp_path)
    assert 0.3 <= q["single"] <= 0.92  # an imperfect model, as real ones are
    assert q["best_of_8"] >= 0.8  # full size: >= 0.93 over 32 prompts
    assert q["best_of_8"] >= q["single"] + 0.05
    assert q["best_of_8"] >= q["worst_of_8"]
    assert q["oracle_any_of_8"] >= q["best_of_8"]


def test_bundled_models_quality():
    from bench.quality import models_quality

    q = models_quality(renders=300)
    assert q["vae_roundtrip"] >= 0.95
    assert q["clip_zero_shot"] >= 0.95
    assert q["aesthetic_spearman"] >= 0.7
