"""A reduced-size run of the smart-compute benchmark on the bundled shapes models: pruning
and adaptive N spend less per kept image, and the report says so consistently."""

import pytest


def test_pruning_and_adaptive_n_spend_less_per_kept_image(tmp_path):
    from bench.smart import measure

    r = measure(prompts=4, tmp=tmp_path, grid=[(0.3, 0.75)])
    plain, (point,) = r["plain"], r["pruning"]
    assert plain["kept"] == point["kept"] == 4 * 2  # keep 2 of 8, both ways
    # Step 6 of 20: 8 x 6 + 2 x 14 UNet steps per prompt instead of 8 x 20.
    assert point["step"] == 6
    assert point["speedup_unet"] == pytest.approx(160 / 76)
    assert point["kept_adherence"] >= plain["kept_adherence"] - 0.25
    adaptive = r["adaptive"]
    assert adaptive["adaptive"]["candidates_per_kept"] <= adaptive["fixed_8"]["candidates_per_kept"]
    assert sum(adaptive["adaptive"]["prompts_by_rounds"].values()) == 4
