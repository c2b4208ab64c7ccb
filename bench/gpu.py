"""GPU throughput at Stable Diffusion 1.5 size: winnow end to end per speed setting (eager bf16,
the torch.compile recipe, max-autotune, an optional 8-bit path), with each call's phases, UNet
evaluations counted, MFU, fidelity against eager bf16, one profile summarised by kernel class,
a batch sweep against the bound, and early pruning's effective throughput.

Random weights with SD 1.5's architecture (512², 25 PNDM steps, guidance 7.5, bf16) and a
random ViT-L-14 + LAION-layout head for scoring; see ``bench.sd15``. ``bench/gpu.sh`` runs it
on one H100/H200 (``bench/README.md``: "To run on a device"). A time budget (``--budget-s``,
counted from ``--started-at``) keeps the whole run within a few minutes: an item that would not
fit is skipped with its reason, and the JSON is rewritten after every item. ``WINNOW_BENCH_TINY=1``
runs the same code at toy sizes on a CPU (a check that it works, not a measurement).

    python -m bench.gpu --out bench/results/gpu-h200.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.loops import LOOPS, Workload, measure, workload
from bench.probes import CallProbe, kernel_classes, profile_kernels, summarize_calls
from bench.sd15 import build_clip_and_head, build_sd15, build_taesd
from winnow.models.generator import (
    CompileRecipe,
    Generator,
    Request,
    compile_pipeline,
    load_pipeline,
    load_preview_decoder,
    unload_pipelines,
)
from winnow.pipeline.config import Config, PruneConfig

TINY = os.environ.get("WINNOW_BENCH_TINY") == "1"
# Dense (no sparsity) bf16 tensor-core peak, FLOP/s: H100 SXM and H200 share the chip (GH100).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}
SUBJECTS = ["a lighthouse", "a red bicycle", "a bowl of ramen", "an old oak tree", "a city at night"]
STYLES = ["at dawn", "in watercolour", "as a photograph", "in the snow", "in a studio"]
# diffusers' published torch.compile recipe for Stable Diffusion's UNet and VAE decode.
RECIPE_FLAGS = (("conv_1x1_as_mm", True), ("coordinate_descent_tuning", True), ("epilogue_fusion", False))
PSNR_CAP_DB = 100.0  # identical images: reported as this, not infinity


@dataclass(frozen=True)
class Setting:
    """A speed setting: generator keys, a compile recipe (None = eager), 8-bit weights and
    activations (torchao float8) for the UNet's linear layers; ``allowance_s``: a guess at
    its compilation seconds, for the time budget."""

    generator: dict[str, Any] = field(default_factory=dict)
    recipe: CompileRecipe | None = None
    fp8: bool = False
    allowance_s: float = 0.0


def settings(backend: str) -> dict[str, Setting]:
    """The settings by name. Compilation allowances are for inductor on an H100/H200 without
    a warm FX graph cache; other backends (``eager`` checks tracing on a CPU) get a tenth."""
    scale = 1.0 if backend == "inductor" else 0.1
    recipe = CompileRecipe(
        fullgraph=True, dynamic=False, vae_decode=True, fuse_qkv=True, inductor=RECIPE_FLAGS, backend=backend
    )
    autotune = dataclasses.replace(recipe, mode="max-autotune")
    nhwc = {"channels_last": True}
    return {
        "eager": Setting(),
        "compile": Setting(nhwc, recipe, allowance_s=120 * scale),
        "compile-max-autotune": Setting(nhwc, autotune, allowance_s=420 * scale),
        "fp8": Setting(nhwc, recipe, fp8=True, allowance_s=150 * scale),
    }


ITEMS = ("eager", "compile", "profile", "sweep", "compile-max-autotune", "prune", "fp8")
# What one run of about 6 minutes gets to first; the budget skips what no longer fits.
# fp8 only when asked for: the 8-bit path is optional.
DEFAULT_ITEMS = "eager,compile,profile,sweep,prune,compile-max-autotune"


class Budget:
    """Seconds left of ``limit_s`` since ``started`` (an epoch time: the set-up counts)."""

    def __init__(self, limit_s: float, started: float) -> None:
        self.limit_s, self.started = limit_s, started
        self.skipped: dict[str, str] = {}

    def used(self) -> float:
        return time.time() - self.started

    def fits(self, item: str, estimate_s: float) -> bool:
        left = self.limit_s - self.used()
        if estimate_s <= left:
            return True
        self.skipped[item] = f"time budget: needs ~{estimate_s:.0f} s, {left:.0f} s left"
        print(f"skip {item}: {self.skipped[item]}", flush=True)
        return False


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for chip, peak in PEAK_BF16.items() if chip in name), None)


def flops_per_image(config: Config) -> dict[str, float]:
    """FLOPs counted by PyTorch's FlopCounterMode: one UNet evaluation of one image (both
    guidance halves: two latent rows), the VAE decode of one image, the text encoder on one
    prompt row; and per image at ``steps`` evaluations (PNDM runs one more: see the counts)."""
    gen = config.generator
    pipe = load_pipeline(gen)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    side = (gen.height or 512) // pipe.vae_scale_factor
    latents = torch.randn(2, 4, side, side, device=device, dtype=dtype)
    # Two different rows: the pipeline's text encoders encode each distinct row once.
    tokens = torch.arange(2, device=device)[:, None].expand(2, 77).contiguous()
    counts = {}
    with torch.inference_mode():
        context = pipe.text_encoder(tokens)[0]
        for name, call in {
            "unet_eval": lambda: pipe.unet(latents, 500, encoder_hidden_states=context),
            "vae_decode": lambda: pipe.vae.decode(latents[:1]),
            "text_encoder_row": lambda: pipe.text_encoder(tokens),
        }.items():
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            counts[name] = float(counter.get_total_flops())
    counts["text_encoder_row"] /= 2
    counts["unet_all_steps"] = counts["unet_eval"] * gen.steps
    counts["total"] = counts["unet_all_steps"] + counts["vae_decode"] + 2 * counts["text_encoder_row"]
    return counts


def executed_flops(phases: dict[str, Any], flops: dict[str, float]) -> dict[str, float]:
    """FLOPs a run executed, from its counted rows: UNet rows (one latent row is half an
    image's evaluation), decoded images, encoded text rows (padding rows included: they ran)."""
    unet = phases["unet_rows"] * flops["unet_eval"] / 2
    return {
        "unet": unet,
        "total": unet
        + phases["vae_rows"] * flops["vae_decode"]
        + phases["text_rows"] * flops["text_encoder_row"],
    }


def psnr(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """PSNR in dB of each image against the reference of the same seed (floats in [0, 1]),
    its minimum and median; identical images count as ``PSNR_CAP_DB``."""
    mse = (images.float().cpu() - reference.float().cpu()).pow(2).flatten(1).mean(1)
    values = [PSNR_CAP_DB if m == 0 else min(PSNR_CAP_DB, 10 * math.log10(1 / m)) for m in mse.tolist()]
    return {"min_db": round(min(values), 2), "median_db": round(statistics.median(values), 2)}


class DeviceSampler:
    """SM clock (MHz) and board power (W) sampled every ``period`` s while in use, by NVML
    (nvidia-ml-py) when importable; nothing on a CPU."""

    def __init__(self, device: torch.device, period: float = 0.25) -> None:
        self.period, self.handle = period, None
        self.clocks: list[float] = []
        self.power: list[float] = []
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            except Exception as err:
                print(f"no NVML samples: {err}", flush=True)

    @contextmanager
    def sampling(self) -> Iterator[None]:
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(self.period):
                self.clocks.append(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))
                self.power.append(self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3)

        thread = threading.Thread(target=poll, daemon=True) if self.handle is not None else None
        if thread:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread:
                thread.join()

    def summary(self) -> dict[str, float | None]:
        def median(xs: list[float]) -> float | None:
            return round(statistics.median(xs), 1) if xs else None

        return {
            "sm_clock_mhz_median": median(self.clocks),
            "sm_clock_mhz_min": min(self.clocks, default=None),
            "power_w_median": median(self.power),
            "power_w_max": max(self.power, default=None),
        }


def dynamo_counters() -> dict[str, Any]:
    """torch.compile's counters so far: graphs compiled, graph breaks (by reason), FX graph
    cache hits and misses, compilation seconds."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    return {
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "graph_break_reasons": dict(counters["graph_break"]),
        "fx_cache_hits": counters["inductor"]["fxgraph_cache_hit"],
        "fx_cache_misses": counters["inductor"]["fxgraph_cache_miss"],
        # Dynamo's whole compile of each frame (tracing and the backend), nested timers left out.
        "compile_seconds": round(sum(compilation_time_metrics.get("_compile.compile_inner", [])), 2),
    }


def counters_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out = {k: round(after[k] - before[k], 2) for k in after if k != "graph_break_reasons"}
    out["graph_break_reasons"] = {
        k: v - before["graph_break_reasons"].get(k, 0) for k, v in after["graph_break_reasons"].items()
    }
    return out


def quantize_fp8(unet: torch.nn.Module) -> str | None:
    """torchao float8 (dynamic activations, weights) on the UNet's linear layers; the reason
    it cannot run here, or None when applied."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
    except ImportError as err:
        return f"torchao not importable: {err}"
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        return "float8 needs a CUDA GPU of compute capability 8.9 or more"
    quantize_(unet, Float8DynamicActivationFloat8WeightConfig())
    return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "open_clip_torch", "triton", "torchao", "nvidia-ml-py"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return out


def gemm_tflops(device: torch.device) -> float | None:
    """A large random bf16 matrix product's rate on this GPU (the practical ceiling), TFLOP/s."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return round(10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12, 1)


class Bench:
    """The run's shared state: models, config, FLOP counts, the eager reference images."""

    def __init__(self, args: argparse.Namespace, tmp: Path, device: str, budget: Budget) -> None:
        self.args, self.device, self.budget = args, torch.device(device), budget
        sd = build_sd15(tmp / "sd15", tiny=TINY, device=device)
        spec, head = build_clip_and_head(tmp / "clip", tiny=TINY)
        self.taesd = build_taesd(tmp / "taesd", tiny=TINY)
        self.prompt_file = tmp / "prompts.txt"
        lines = [
            f"{s} {t}" + (f", take {k}" if k else "") for k in range(4) for t in STYLES for s in SUBJECTS
        ]
        self.prompt_file.write_text("\n".join(lines) + "\n")  # 100 distinct prompts
        clip = {"model": spec.model, "pretrained": spec.pretrained}
        self.size = 64 if TINY else 512
        self.base = {
            "prompts": {"path": str(self.prompt_file)},
            "generator": {"model": str(sd), "steps": args.steps, "guidance": 7.5}
            | {"width": self.size, "height": self.size},
            "scorers": {"clip_score": {"clip": clip}, "aesthetic": {"clip": clip, "head": str(head)}},
            "select": {"keep": args.keep},
            "run": {"candidates": args.candidates, "out": str(tmp / "catalog")},
        }
        self.settings = settings(args.backend)
        self.peak = peak_flops(self.device)
        self.sampler = DeviceSampler(self.device)
        self.flops = flops_per_image(self.work(1, 1).config)
        self.reference: torch.Tensor | None = None  # eager's first call, for PSNR
        self.ips: dict[str, float] = {}  # median img/s per measured setting

    def work(self, prompts: int, batch: int, data: dict | None = None, **generator: object) -> Workload:
        return workload(data or self.base, self.prompt_file, prompts, batch, **generator)

    def prompts_for(self, calls: int, batch: int) -> int:
        """Prompts that fill ``calls`` calls of ``batch`` (at least one prompt)."""
        return max(1, calls * batch // self.args.candidates)

    def load(self, name: str) -> tuple[Any, dict[str, Any]]:
        """A fresh pipeline for setting ``name`` (the previous one forgotten), its recipe
        applied; and what the set-up recorded (a reason to skip, under ``skipped``)."""
        setting = self.settings[name]
        unload_pipelines()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        gen = self.work(1, self.args.batch, **setting.generator).config.generator
        pipe = load_pipeline(gen)
        info: dict[str, Any] = {"generator": setting.generator}
        if setting.fp8:
            reason = quantize_fp8(pipe.unet)
            if reason:
                return pipe, info | {"skipped": reason}
        if setting.recipe is not None:
            compile_pipeline(pipe, setting.recipe)
            info["recipe"] = dataclasses.asdict(setting.recipe) | {"inductor": dict(setting.recipe.inductor)}
        return pipe, info

    def measure_setting(self, name: str) -> dict[str, Any]:
        """winnow at ``--batch`` with setting ``name``: every shape warmed first (compilation
        kept out of the timing), then ``--repeats`` runs of ``--calls`` calls, each call's
        phases and UNet evaluations recorded; img/s median and spread, MFU from the executed
        FLOPs, PSNR of the first call's images against eager bf16's."""
        args = self.args
        pipe, out = self.load(name)
        if "skipped" in out:
            return out
        batch = args.batch
        extra = self.settings[name].generator
        before = dynamo_counters()
        began = time.perf_counter()
        measure(LOOPS["winnow"], self.work(self.prompts_for(1, batch), batch, **extra))
        out["warmup_seconds"] = round(time.perf_counter() - began, 2)  # compilation included
        warm = dynamo_counters()
        out["compile"] = counters_delta(before, warm)
        work = self.work(self.prompts_for(args.calls, batch), batch, **extra)
        repeats, rows, images = [], [], None
        with self.sampler.sampling():
            for r in range(args.repeats):
                probe = CallProbe(self.device, keep_images=r == 0)
                with probe.installed(pipe):
                    timing = measure(LOOPS["winnow"], work)
                calls = probe.per_call()
                phases = summarize_calls(calls)
                done = executed_flops(phases, self.flops)
                unet_s = sum(c["unet"] for c in calls) / 1e3
                peak = self.peak or math.nan  # no MFU on a CPU (null in the JSON)
                mfu = {
                    "mfu": done["total"] / timing.seconds / peak,
                    "unet_mfu_in_unet_time": done["unet"] / unet_s / peak,
                }
                repeats.append(timing.as_dict() | {k: _round(v) for k, v in mfu.items()})
                rows += calls
                images = images if images is not None else probe.calls[0].images
        ips = [r["images_per_s"] for r in repeats]
        self.ips[name] = statistics.median(ips)
        out |= {
            "batch": batch,
            "calls_per_repeat": len(rows) // args.repeats,
            "images_per_s": {"median": round(self.ips[name], 4), "min": min(ips), "max": max(ips)},
            "mfu_median": _median([r["mfu"] for r in repeats]),
            "unet_mfu_in_unet_time_median": _median([r["unet_mfu_in_unet_time"] for r in repeats]),
            "peak_mib": max(r["peak_mib"] for r in repeats),
            "repeats": repeats,
            "phases": summarize_calls(rows),
            "recompiles_in_timing": dynamo_counters()["graphs"] - warm["graphs"],
            "device": self.sampler.summary(),
        }
        self.sampler.clocks.clear()
        self.sampler.power.clear()
        if name == "eager":
            self.reference = images
        if self.reference is not None and images is not None:
            out["psnr_vs_eager"] = psnr(images, self.reference)
        return out

    def profile(self, pipe: Any, setting: str) -> dict[str, Any]:
        """One steady-state call at ``--batch`` under torch.profiler, summarised by kernel
        class (on a CPU: by innermost op, the same code path)."""
        from torch.profiler import ProfilerActivity, profile

        gen = self.work(1, self.args.batch, **self.settings[setting].generator).config.generator
        requests = [Request(f"prompt {k % 2}", "", 1000 + k) for k in range(self.args.batch)]
        generator = Generator(gen)
        list(generator.generate(requests))  # this shape's first call, outside the trace
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            list(generator.generate(requests))
        summary = kernel_classes(profile_kernels(prof, self.device.type == "cuda"))
        if self.args.trace:
            prof.export_chrome_trace(str(self.args.trace))
        return {"setting": setting, "batch": self.args.batch} | summary

    def sweep(self) -> dict[str, Any]:
        """Eager bf16 bound and winnow at each ``--batch-sizes`` (one warm-up call each, then
        ``--sweep-calls`` calls); winnow / bound per batch size."""
        self.load("eager")
        out: dict[str, Any] = {}
        for b in (int(x) for x in self.args.batch_sizes.split(",")):
            if not self.budget.fits(f"sweep {b}", 2.2 * self.args.sweep_calls * b / self.ips["eager"] + 3):
                continue
            measure(LOOPS["bound"], self.work(self.prompts_for(1, b), b))
            work = self.work(self.prompts_for(self.args.sweep_calls, b), b)
            point = {name: measure(LOOPS[name], work).as_dict() for name in ("bound", "winnow")}
            point["ratio_winnow_vs_bound"] = round(
                point["winnow"]["images_per_s"] / point["bound"]["images_per_s"], 4
            )
            out[str(b)] = point
            print("sweep", b, point, flush=True)
        return out

    def prune(self) -> dict[str, Any]:
        """Effective throughput (candidates per second: pruned ones never finish, so no MFU)
        with early pruning (``prune: {at, drop: 0.625}``) against the same run unpruned, all
        eager bf16 with DPM-Solver++ (PNDM keeps no x0 estimate to preview); previews decoded
        by the pipeline's VAE, and by a TAESD-architecture ``AutoencoderTiny``. Each run's
        exact workload runs once untimed first (every shape: both phases, the last call)."""
        self.load("eager")
        dpm = {"scheduler": "DPMSolverMultistepScheduler"}
        config = PruneConfig(at=self.args.prune_at, drop=0.625)
        prune = config.model_dump()
        runs = {
            "plain": self.base,
            "pruned": self.base | {"prune": prune},
            "pruned_tiny_preview": self.base | {"prune": prune | {"preview": str(self.taesd)}},
        }
        out: dict[str, Any] = {}
        for name, data in runs.items():
            work = self.work(self.args.prune_prompts, self.args.batch, data, **dpm)
            measure(LOOPS["winnow"], work)
            timing = measure(LOOPS["winnow"], work)
            out[name] = {
                "candidates": timing.images,
                "seconds": round(timing.seconds, 4),
                "effective_candidates_per_s": round(timing.images_per_s, 4),
                "peak_mib": round(timing.peak_mib, 1),
            }
            print(name, out[name], flush=True)
        for name in ("pruned", "pruned_tiny_preview"):
            out[f"speedup_seconds_{name}"] = round(out["plain"]["seconds"] / out[name]["seconds"], 4)
        steps, n = self.args.steps, self.args.candidates
        step, finish = config.step(steps), config.survivors(n)
        out["speedup_unet_steps"] = round(steps * n / (step * n + (steps - step) * finish), 4)
        generator = self.work(1, self.args.batch, runs["pruned_tiny_preview"], **dpm).config.generator
        pipe, tiny = load_pipeline(generator), load_preview_decoder(str(self.taesd), generator)
        side = self.size // pipe.vae_scale_factor
        latents = torch.randn(1, 4, side, side, device=pipe.vae.device, dtype=pipe.vae.dtype)
        for name, decoder in (("vae", pipe.vae), ("tiny", tiny)):
            counter = FlopCounterMode(display=False)
            with counter, torch.inference_mode():
                decoder.decode(latents)
            out[f"preview_flops_{name}"] = float(counter.get_total_flops())
        return out

    def estimate(self, item: str) -> float:
        """Seconds ``item`` should take, from eager's measured img/s."""
        a, ips = self.args, self.ips.get("eager", 1.0)
        measured = (a.repeats * a.calls + 1) * a.batch / ips
        if item in self.settings:
            return self.settings[item].allowance_s + measured / 1.2 + 5
        if item == "profile":
            return 4 * a.batch / ips + 10
        if item == "sweep":  # at least the smallest batch size
            return 2.2 * a.sweep_calls * min(int(b) for b in a.batch_sizes.split(",")) / ips + 5
        return 6 * a.prune_prompts * a.candidates / ips + 10  # prune: 3 runs, each twice

    def run(self, items: list[str], results: dict[str, Any], write: Callable[[], None]) -> None:
        pipe, loaded = None, None
        for item in items:
            if item != "eager" and "eager" not in self.ips:
                self.budget.skipped[item] = "needs the eager measurement first"
                continue
            if item != "eager" and not self.budget.fits(item, self.estimate(item)):
                continue
            print(f"== {item} ({self.budget.used():.0f} s used)", flush=True)
            try:
                pipe, loaded = self.run_item(item, pipe, loaded, results)
            except Exception as err:  # one item's failure must not lose the others' numbers
                results.setdefault("errors", {})[item] = f"{type(err).__name__}: {err}"
                print(f"{item} failed: {results['errors'][item]}", flush=True)
                pipe = None
            write()

    def run_item(self, item: str, pipe: Any, loaded: str | None, results: dict[str, Any]) -> tuple[Any, Any]:
        """Run ``item`` into ``results``; returns the pipeline now loaded and its setting."""
        if item in self.settings:
            results["settings"][item] = self.measure_setting(item)
            print(item, _short(results["settings"][item]), flush=True)
            gen = self.work(1, 1, **self.settings[item].generator).config.generator
            return load_pipeline(gen), item
        if item == "profile":
            if pipe is None:
                self.budget.skipped[item] = "no setting measured just before it"
            else:
                results["profile"] = self.profile(pipe, loaded)
                print("profile", results["profile"]["classes"], flush=True)
            return pipe, loaded
        if item == "sweep":
            results["batch_sweep"] = self.sweep()
        else:
            results["pruning"] = self.prune()
        return None, None  # both loaded eager afresh: no setting's pipeline is at hand


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _short(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("skipped", "images_per_s", "mfu_median", "psnr_vs_eager", "warmup_seconds")
    keys += ("recompiles_in_timing",)
    return {k: result[k] for k in keys if k in result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument("--items", default=DEFAULT_ITEMS, help=f"in order, of: {','.join(ITEMS)}")
    parser.add_argument("--batch", type=int, default=2 if TINY else 16, help="the settings' batch size")
    parser.add_argument("--calls", type=int, default=2 if TINY else 8, help="steady calls per repeat")
    parser.add_argument("--repeats", type=int, default=2 if TINY else 3)
    parser.add_argument("--batch-sizes", default="2" if TINY else "8,16,32,64", help="the sweep's")
    parser.add_argument("--sweep-calls", type=int, default=2, help="calls per loop and batch size (sweep)")
    parser.add_argument("--candidates", type=int, default=2 if TINY else 8)
    parser.add_argument("--keep", type=int, default=1 if TINY else 2, help="kept per prompt")
    parser.add_argument("--steps", type=int, default=2 if TINY else 25)
    parser.add_argument("--prune-prompts", type=int, default=1 if TINY else 10)
    parser.add_argument("--prune-at", type=float, default=0.5 if TINY else 0.2)
    parser.add_argument("--backend", default="eager" if TINY else "inductor", help="torch.compile backend")
    parser.add_argument("--budget-s", type=float, default=330, help="stop adding items after this")
    parser.add_argument("--started-at", type=float, default=time.time(), help="budget's start, epoch s")
    parser.add_argument("--trace", type=Path, help="also write the profile as a Chrome trace here")
    args = parser.parse_args()
    items = [i for i in args.items.split(",") if i]
    unknown = set(items) - set(ITEMS)
    if unknown:
        parser.error(f"unknown items {sorted(unknown)}; known: {','.join(ITEMS)}")

    budget = Budget(args.budget_s, args.started_at)
    # Each setting compiles a fresh pipeline's UNet: more graphs per code object than the default.
    torch._dynamo.config.recompile_limit = 64
    tmp = Path(tempfile.mkdtemp(prefix="winnow-gpu-"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {"settings": {}}

    def write() -> None:
        used = round(budget.used(), 1)
        results["budget"] = {"limit_s": args.budget_s, "used_s": used, "skipped": budget.skipped}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")

    bench = Bench(args, tmp, device, budget)
    torch_device = torch.device(device)
    results |= {
        "machine": {
            "device": torch.cuda.get_device_name(torch_device) if device == "cuda" else platform.processor(),
            "peak_bf16_flops": bench.peak,
            "gemm_bf16_tflops_measured": gemm_tflops(torch_device),
            "versions": versions(),
        },
        "workload": {
            "model": "SD 1.5 architecture, random weights" + (" (tiny)" if TINY else ""),
            "size": bench.size,
            "steps": args.steps,
            "guidance": 7.5,
            "dtype": str(load_pipeline(bench.work(1, 1).config.generator).unet.dtype).removeprefix("torch."),
            "scoring": "ViT-L-14 CLIP score + LAION-layout aesthetic head" + (" (tiny)" if TINY else ""),
            "candidates_per_prompt": args.candidates,
            "keep": args.keep,
        },
        "flops_per_image": bench.flops,
        "items": items,
    }
    print(f"TFLOP per image: {bench.flops['total'] / 1e12:.2f}; set-up {budget.used():.0f} s", flush=True)
    try:
        bench.run(items, results, write)
    finally:
        for item in ITEMS:
            if item not in items:
                budget.skipped.setdefault(item, "not asked for (--items)")
        write()
    report(results, args.out)


def report(results: dict[str, Any], out: Path) -> None:
    """The short table the run ends with (the JSON has everything)."""
    print(f"\n{'setting':<22} {'img/s':>7} {'spread':>13} {'MFU':>6} {'PSNR min':>9} {'warm-up s':>9}")
    for name, r in results["settings"].items():
        if "skipped" in r:
            print(f"{name:<22} skipped: {r['skipped']}")
            continue
        ips = r["images_per_s"]
        spread = f"{ips['min']:.2f}-{ips['max']:.2f}"
        mfu = r["mfu_median"] if r["mfu_median"] is not None else float("nan")
        p = r.get("psnr_vs_eager", {}).get("min_db", float("nan"))
        warm = r["warmup_seconds"]
        print(f"{name:<22} {ips['median']:>7.2f} {spread:>13} {mfu:>6.3f} {p:>9.1f} {warm:>9.1f}")
        phases = r["phases"]["median_ms"]
        print("  ms/call: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items() if v is not None))
        print(f"  UNet evaluations per call: {r['phases']['unet_evals_per_call']}")
    for b, point in results.get("batch_sweep", {}).items():
        print(
            f"sweep batch {b}: bound {point['bound']['images_per_s']:.2f}, winnow "
            f"{point['winnow']['images_per_s']:.2f} img/s, ratio {point['ratio_winnow_vs_bound']:.3f}"
        )
    if "profile" in results:
        p = results["profile"]
        shares = ", ".join(f"{k} {v['share']:.2f}" for k, v in p["classes"].items())
        print(f"profile ({p['setting']}): {shares}; SDPA: {p['sdpa_backend']}")
    if "pruning" in results:
        p = results["pruning"]
        print(
            f"pruning: {p['speedup_seconds_pruned']:.2f}x (VAE previews), "
            f"{p['speedup_seconds_pruned_tiny_preview']:.2f}x (tiny previews) fewer seconds"
        )
    print(f"budget: {results['budget']}\nwrote {out}")


if __name__ == "__main__":
    main()
