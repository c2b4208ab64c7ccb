"""The benchmarks run end to end at toy sizes on the CPU and report what they promise.
Timings are not asserted: only that every loop ran and the report has its keys."""

import json
import sys

import pytest
import torch

from winnow.models.generator import Generator, Request


def test_cpu_bench_reports_three_loops_and_ratios(tmp_path, monkeypatch):
    from bench import cpu

    out = tmp_path / "cpu.json"
    argv = ["bench.cpu", "--small", "--prompts", "2", "--candidates", "2", "--keep", "1"]
    argv += ["--batch-size", "2", "--steps", "1", "--no-scaling", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    cpu.main()
    report = json.loads(out.read_text())
    for loop in ("notebook", "winnow", "bound"):
        assert report[loop]["images"] == 4 and report[loop]["images_per_s"] > 0
        assert report[loop]["peak_mib"] > 0
    assert report["ratio_winnow_vs_bound"] > 0 and report["ratio_winnow_vs_notebook"] > 0
    assert {"cpu", "cores", "load_average_at_start"} <= report["machine"].keys()


def test_sd15_architecture_builds_and_its_flops_are_counted(tmp_path):
    from bench.gpu import flops_per_image
    from bench.loops import workload
    from bench.sd15 import build_clip_and_head, build_sd15

    sd = build_sd15(tmp_path / "sd", tiny=True)
    spec, head = build_clip_and_head(tmp_path / "clip", tiny=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse\n")
    clip = {"model": spec.model, "pretrained": spec.pretrained}
    base = {
        "prompts": {"path": str(prompts)},
        "generator": {"model": str(sd), "steps": 3, "width": 64, "height": 64},
        "scorers": {"clip_score": {"clip": clip}, "aesthetic": {"clip": clip, "head": str(head)}},
        "run": {"candidates": 1},
    }
    work = workload(base, prompts, 1, 1)
    flops = flops_per_image(work.config)
    assert flops["unet_eval"] > 0 and flops["vae_decode"] > 0 and flops["text_encoder_row"] > 0
    assert flops["unet_all_steps"] == pytest.approx(3 * flops["unet_eval"])
    (batch,) = Generator(work.config.generator).generate([Request("a lighthouse", "", 1)])
    assert batch.images.shape == (1, 3, 64, 64) and torch.isfinite(batch.images).all()
