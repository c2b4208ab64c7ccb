"""Early pruning: survivors finish exactly as they would unpruned, the judge sees what it
should, pruned candidates are recorded with preview scores. Tiny random models, CPU."""

import numpy as np
import pytest
import torch

from tests.helpers import run_shards
from winnow.models.errors import ModelNotFoundError, WinnowError
from winnow.models.generator import Generator, GeneratorParams, Request, load_pipeline
from winnow.models.prune import Prune
from winnow.models.testing import build_tiny_preview
from winnow.pipeline.config import ConfigError, load_config
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.regenerate import check_row, read_png
from winnow.pipeline.shard import default_run_id

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
REQUESTS = [Request(p, "", 100 + i) for i, p in enumerate(["a", "b", "c", "d", "e"])]


class Judge:
    """Keeps even request indices; remembers what it was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[int], tuple[int, ...], float, float]] = []

    def __call__(self, rows: list[int], previews: torch.Tensor) -> torch.Tensor:
        self.seen.append((rows, tuple(previews.shape), previews.min().item(), previews.max().item()))
        return torch.tensor([r % 2 == 0 for r in rows])


def images(params: GeneratorParams, prune: Prune | None = None) -> tuple[list, dict[int, torch.Tensor]]:
    batches = list(Generator(params).generate(REQUESTS, prune))
    return batches, {row: image for b in batches for row, image in zip(b.rows, b.images, strict=True)}


@pytest.mark.parametrize(
    "scheduler",
    [
        "DPMSolverMultistepScheduler",
        "DDIMScheduler",
        "EulerAncestralDiscreteScheduler",
        "UniPCMultistepScheduler",
    ],
)
def test_survivors_finish_as_if_unpruned(tiny_sd, scheduler):
    # DPM-Solver++ and UniPC keep x0 in their history; DDIM and Euler ancestral report
    # pred_original_sample, and the ancestral one draws noise per candidate.
    params = GeneratorParams(model=str(tiny_sd), steps=4, batch_size=4, guidance=3.0, scheduler=scheduler)
    _, full = images(params)
    judge = Judge()
    batches, pruned = images(params, Prune(step=2, judge=judge))

    assert [b.rows for b in batches] == [(0, 2), (4,)]
    assert [(b.start, b.stop, b.size) for b in batches] == [(0, 4, 4), (4, 5, 1)]  # not padded
    # The judge sees each call's candidates as images in [0, 1].
    assert [(rows, shape) for rows, shape, _, _ in judge.seen] == [
        ([0, 1, 2, 3], (4, 3, 16, 16)),
        ([4], (1, 3, 16, 16)),
    ]
    assert all(lo >= 0.0 and hi <= 1.0 for _, _, lo, hi in judge.seen)
    for row, image in pruned.items():
        torch.testing.assert_close(image, full[row], atol=1e-4, rtol=0)
    # The scheduler is the class's again, and an unpruned call after a pruned one is unchanged.
    assert "step" not in vars(load_pipeline(params).scheduler)
    _, again = images(params)
    for row in full:
        torch.testing.assert_close(again[row], full[row], atol=1e-5, rtol=0)


def test_a_tiny_decoder_makes_the_previews_and_changes_nothing_else(tiny_sd, tmp_path):
    params = GeneratorParams(
        model=str(tiny_sd), steps=4, batch_size=4, scheduler="DPMSolverMultistepScheduler"
    )
    _, full = images(params)
    decoder = Generator(params).preview_decoder(str(build_tiny_preview(tmp_path / "taesd")))
    calls = []
    decode = decoder.decode
    decoder.decode = lambda latents, **kw: calls.append(len(latents)) or decode(latents, **kw)
    try:
        by_vae, by_tiny = Judge(), Judge()
        images(params, Prune(step=2, judge=by_vae))
        _, pruned = images(params, Prune(step=2, judge=by_tiny, decoder=decoder))
    finally:
        del decoder.decode
    assert calls == [4, 1]  # one decode per call, of its real candidates
    assert [seen[:2] for seen in by_tiny.seen] == [seen[:2] for seen in by_vae.seen]
    assert [seen[2:] for seen in by_tiny.seen] != [seen[2:] for seen in by_vae.seen]  # other pixels
    assert all(lo >= 0.0 and hi <= 1.0 for _, _, lo, hi in by_tiny.seen)
    for row, image in pruned.items():  # the preview only decides who survives
        torch.testing.assert_close(image, full[row], atol=1e-4, rtol=0)


def test_scheduler_without_an_x0_estimate_is_a_clear_error(tiny_sd):
    params = GeneratorParams(model=str(tiny_sd), steps=4, batch_size=4, scheduler="PNDMScheduler")
    with pytest.raises(WinnowError, match="PNDMScheduler gives no estimate of the final image"):
        images(params, Prune(step=2, judge=Judge()))


def test_pruned_candidates_are_recorded_and_survivors_selected(make_config, tmp_path):
    # 4 candidates per prompt, batches of 4: drop 0.5 stops 2 of each, so a call starts with
    # 2 prompts (8 candidates) to finish 4; the shard's 3 prompts make a call of 8 and one of 4.
    sections = {
        "generator": {"steps": 4, "batch_size": 4},
        "run": {"candidates": 4, "shard_size": 3, "save_rejected": True},
        "select": {"keep": 1},
    }
    path = make_config(PROMPTS, **sections)
    config = load_config(path)
    plain = run_shards(config)
    pruned = run_shards(
        load_config(path, {"prune.at": 0.5, "prune.drop": 0.5, "run.out": str(tmp_path / "p")})
    )

    assert (pruned["candidate_id"] == plain["candidate_id"]).all()
    assert (pruned["seed"] == plain["seed"]).all()
    assert set(plain["batch_size"]) == {4} and set(pruned["batch_size"]) == {8, 4}
    stopped = pruned["reject_reason"] == "pruned_at_step:2"
    assert stopped.groupby(pruned["prompt_id"]).sum().tolist() == [2, 2, 2]
    assert pruned.loc[stopped, "image_path"].isna().all() and not pruned.loc[stopped, "kept"].any()
    assert np.isfinite(pruned[["score_clip_score", "score_aesthetic"]].to_numpy()).all()  # previews
    assert (pruned.groupby("prompt_id")["kept"].sum() == 1).all()
    # Pruned ones rank after the survivors; survivors keep their unpruned scores and pixels.
    for _, group in pruned.groupby("prompt_id"):
        assert group.loc[stopped, "rank"].min() > group.loc[~stopped, "rank"].max()
    live = pruned[~stopped]
    same = plain.set_index("candidate_id").loc[live["candidate_id"]]
    np.testing.assert_allclose(live["score_clip_score"], same["score_clip_score"], atol=0.05)
    for a, b in zip(live["image_path"], same["image_path"], strict=True):
        diff = read_png(tmp_path / "p", a).astype(int) - read_png(config.run.out, b).astype(int)
        assert np.abs(diff).max() <= 1
    # A survivor regenerates bit for bit (the call's pruning is replayed); a pruned one has no image.
    assert check_row(tmp_path / "p", live["candidate_id"].iloc[-1]).match
    with pytest.raises(WinnowError, match="was pruned at step 2: it has no final image"):
        check_row(tmp_path / "p", pruned.loc[stopped, "candidate_id"].iloc[0])


def test_prune_preview_from_the_config(make_config, tiny_sd, tmp_path):
    preview = build_tiny_preview(tmp_path / "taesd")
    path = make_config(
        PROMPTS,
        generator={"steps": 4, "batch_size": 4},
        run={"candidates": 4, "shard_size": 3},
        select={"keep": 1},
        prune={"at": 0.5, "drop": 0.5, "preview": str(preview)},
    )
    config = load_config(path)
    rows = run_shards(config)
    assert (rows["reject_reason"] == "pruned_at_step:2").sum() == 6 and rows["kept"].sum() == 3
    # The preview decoder's weights are part of the run's identity.
    prompts = read_prompts(config.prompts.path)
    by_vae = load_config(path, {"prune.preview": "vae"})
    assert default_run_id(config, prompts) != default_run_id(by_vae, prompts)
    # A wrong preview model fails in one line before anything is generated.
    wrong = {
        str(tmp_path / "nope"): (ModelNotFoundError, "no such local path"),
        str(tiny_sd): (ModelNotFoundError, r"prune.preview '.*' is not an AutoencoderTiny"),
        str(build_tiny_preview(tmp_path / "taesd3", latent_channels=3)): (
            WinnowError,
            "decodes 3-channel latents; this model's have 4",
        ),
    }
    for i, (ref, (error, message)) in enumerate(wrong.items()):
        out = tmp_path / f"bad{i}"
        with pytest.raises(error, match=message) as err:
            run_shards(load_config(path, {"prune.preview": ref, "run.out": str(out)}))
        assert "\n" not in str(err.value)
        assert not [p for p in out.rglob("*") if p.suffix in (".parquet", ".png")]  # no part, no image


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"at": 0.5, "drop": 0.5, "scorer": "nsfw"}, "prune.scorer 'nsfw' is not one of the configured"),
        ({"at": 0.1, "drop": 0.5}, "prune.at 0.1 of 4 steps prunes before the first or after the last"),
        ({"at": 0.5, "drop": 0.9}, "prune.drop 0.9 leaves 1 of 4 candidates per prompt, fewer than"),
        ({"at": 1.0, "drop": 0.5}, r"prune.at: Input should be less than 1 \(got 1.0\)"),
    ],
)
def test_bad_prune_settings_are_one_line_errors(make_config, prune, message):
    path = make_config(PROMPTS, generator={"steps": 4}, run={"candidates": 4}, prune=prune)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
