"""A reduced-size run of the smart-compute benchmark on the bundled shapes models: pruning
and adaptive N spend less per kept image, and the report adds up."""

import pytest


def test_pruning_and_adaptive_n_spend_less_per_kept_image(tmp_path):
    from bench.smart import measure

    r = measure(
        prompts=2, tmp=tmp_path, grid=[(0.3, 0.75, "vae"), (0.3, 0.75, "bundled:shapes-preview")], seeds=2
    )
    assert r["settings"]["instances"] == 4  # 2 prompts under run seeds 0 and 1
    assert [point["preview"] for point in r["pruning"]] == ["vae", "bundled:shapes-preview"]
    for point, k in [(point, k) for point in r["pruning"] for k in (1, 2)]:
        assert point["step"] == 6 and point["survivors"] == 2
        plain, pruned = r["plain"][f"keep_{k}"], point[f"keep_{k}"]
        assert plain["kept"] == pruned["kept"] == 4 * k
        # Step 6 of 20: 8 x 6 + 2 x 14 UNet steps per prompt instead of 8 x 20.
        assert pruned["speedup_unet"] == pytest.approx(160 / 76)
        assert pruned["kept_adherence"] >= plain["kept_adherence"] - 0.25
        net = pruned["right_gained"] - pruned["right_lost"]
        assert net == round(pruned["adherence_delta_points"] / 100 * pruned["kept"])
    for a in r["adaptive"]["runs"]:
        assert a["adaptive"]["candidates_per_kept"] <= a["fixed_8"]["candidates_per_kept"]
        assert sum(a["adaptive"]["instances_by_rounds"].values()) == 4
