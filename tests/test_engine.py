"""The shard engine: out-of-memory retries lose nothing, prompt-wise selection equals selecting
the whole shard, and the speed settings reach the pipeline. Tiny random models, CPU."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import winnow.models.generator as generator_module
from winnow.models.errors import WinnowError
from winnow.models.generator import Generator, GeneratorParams, Request, candidate_seed, load_pipeline
from winnow.pipeline.config import load_config
from winnow.pipeline.engine import run_shard
from winnow.pipeline.generated import GeneratedSource
from winnow.pipeline.prompts import read_prompts
from winnow.pipeline.regenerate import read_png, regenerate
from winnow.pipeline.shard import plan_shards, process_shard
from winnow.scoring.select import select

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def run_plain(config) -> tuple[pd.DataFrame, list]:
    """All shards of ``config`` through ``process_shard`` (no Prefect); the rows and results."""
    prompts = read_prompts(config.prompts.path, config.generator.negative_prompt, config.prompts.limit)
    results = [process_shard(config, plan) for plan in plan_shards("run", prompts, config.run.shard_size)]
    return pd.read_parquet(Path(config.run.out) / "runs").sort_values("candidate_id"), results


class FlakyPipeline:
    """Wraps a pipeline; the first ``times`` calls with more than ``limit`` prompts raise
    PyTorch's out-of-memory error, as CUDA would."""

    def __init__(self, pipe, limit: int, times: int = 1) -> None:
        self.pipe, self.limit, self.times, self.raised = pipe, limit, times, 0

    def __call__(self, **kwargs):
        if len(kwargs["prompt"]) > self.limit and self.raised < self.times:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.pipe(**kwargs)

    def __getattr__(self, name: str):
        return getattr(self.pipe, name)


def test_out_of_memory_halves_the_batch_and_loses_nothing(make_config, tmp_path, monkeypatch):
    path = make_config(PROMPTS, generator={"batch_size": 4}, run={"candidates": 3, "shard_size": 2})
    config = load_config(path)
    clean, _ = run_plain(config)

    flaky = FlakyPipeline(load_pipeline(config.generator), limit=2)
    monkeypatch.setattr(generator_module, "load_pipeline", lambda params: flaky)
    out = tmp_path / "oom-catalog"
    retried, results = run_plain(load_config(path, {"run.out": str(out)}))

    assert flaky.raised == 1
    assert [r.oom_retries for r in results] == [1, 0]
    assert len(retried) == len(PROMPTS) * 3
    # The shard that failed ran every later call at half size; the next shard starts afresh.
    sizes = retried.groupby("shard_id")["batch_size"].unique().map(list).to_dict()
    assert sizes == {"00000": [2], "00001": [4]}
    same = ["candidate_id", "seed", "kept", "rank", "reject_reason"]
    pd.testing.assert_frame_equal(retried[same].reset_index(drop=True), clean[same].reset_index(drop=True))
    for a, b in zip(clean[clean["kept"]].itertuples(), retried[retried["kept"]].itertuples(), strict=True):
        before = read_png(Path(config.run.out), a.image_path).astype(int)
        after = read_png(out, b.image_path).astype(int)
        assert np.abs(before - after).max() <= 1  # batch-independent up to float rounding
    # The catalog records the calls as they ran, so a row still regenerates bit-identically.
    row = retried[retried["kept"]].iloc[-1]
    shard = retried[retried["shard_id"] == row["shard_id"]]
    np.testing.assert_array_equal(regenerate(shard, row["candidate_id"]), read_png(out, row["image_path"]))


def test_out_of_memory_at_batch_size_one_is_an_error(tiny_sd, monkeypatch):
    params = GeneratorParams(model=str(tiny_sd), steps=2, batch_size=2)
    always = FlakyPipeline(load_pipeline(params), limit=0, times=100)
    monkeypatch.setattr(generator_module, "load_pipeline", lambda params: always)
    gen = Generator(params)
    with pytest.raises(WinnowError, match=r"out of memory at batch size 1 \(call size 1\)"):
        list(gen.generate([Request("a", "", 1)]))
    assert gen.oom_retries == 1  # 2 -> 1, then no smaller size to try


def test_prompt_wise_selection_equals_selecting_the_whole_shard(make_config):
    # Batches of 4 over prompts of 3 candidates: prompts complete in the middle of batches.
    config = load_config(make_config(PROMPTS, generator={"batch_size": 4}, run={"candidates": 3}))
    prompts = read_prompts(config.prompts.path)
    (plan,) = plan_shards("run", prompts, len(prompts))
    rows = run_shard(GeneratedSource(config, plan))
    assert [r.seed for r in rows] == [candidate_seed(0, p.id, k) for p in prompts for k in range(3)]
    scores = {name: np.array([r.scores[name] for r in rows]) for name in config.scorers}
    whole = select(scores, [r.prompt_id for r in rows], config.select)
    np.testing.assert_array_equal([r.kept for r in rows], whole.kept)
    np.testing.assert_array_equal([r.rank for r in rows], whole.rank)
    np.testing.assert_array_equal([r.combined_score for r in rows], whole.combined)
    assert [r.reject_reason for r in rows] == whole.reason
    assert [r.image_path is not None for r in rows] == list(whole.kept)
    assert [r.batch_index for r in rows] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert [r.batch_position for r in rows] == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_speed_settings_reach_the_pipeline(tiny_sd):
    base = GeneratorParams(model=str(tiny_sd), steps=2, batch_size=2)
    tuned = base.model_copy(update={"channels_last": True, "vae_slicing": True})
    pipe = load_pipeline(tuned)
    assert pipe is not load_pipeline(base)  # different settings, different cached pipeline
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert pipe.vae.use_slicing
    requests = [Request("a red circle", "", s) for s in (1, 2, 3)]
    images = [torch.cat([b.images for b in Generator(p).generate(requests)]) for p in (base, tuned)]
    torch.testing.assert_close(images[0], images[1], atol=1e-4, rtol=0)


def test_compile_warms_up_once_outside_the_timed_calls(tiny_sd, monkeypatch):
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(self))
    params = GeneratorParams(model=str(tiny_sd), steps=3, batch_size=2, compile=True)
    pipe = load_pipeline(params)
    assert compiled == [pipe.unet]
    steps: list[int] = []
    original = type(pipe).__call__
    monkeypatch.setattr(
        type(pipe),
        "__call__",
        lambda self, **kw: steps.append(kw["num_inference_steps"]) or original(self, **kw),
    )
    requests = [Request("a", "", 1), Request("b", "", 2), Request("c", "", 3)]
    for _ in range(2):
        list(Generator(params).generate(requests))
    assert steps == [2, 3, 3, 3, 3]  # one short warm-up call per process, then the real ones
