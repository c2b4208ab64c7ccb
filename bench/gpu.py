"""GPU throughput at Stable Diffusion 1.5 size: notebook vs winnow vs bound, a batch-size sweep,
model FLOP utilisation (MFU) against the chip's dense bf16 peak, the speed settings
(channels_last, torch.compile) and early pruning's saving, with full-VAE and tiny-decoder previews.

Random weights with SD 1.5's architecture (512², 25 PNDM steps, guidance 7.5, bf16) and a
random ViT-L-14 + LAION-layout head for scoring; see ``bench.sd15``. ``bench/gpu.sh`` runs it
on one H100/H200 in a few minutes. ``WINNOW_BENCH_TINY=1`` runs the same code at toy sizes on
a CPU (a check that it works, not a measurement).

    python -m bench.gpu --out bench/results/gpu-h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.loops import LOOPS, Timing, measure, workload
from bench.sd15 import build_clip_and_head, build_sd15, build_taesd
from winnow.models.generator import load_pipeline, load_preview_decoder
from winnow.pipeline.config import Config, PruneConfig

TINY = os.environ.get("WINNOW_BENCH_TINY") == "1"
# Dense (no sparsity) bf16 tensor-core peak, FLOP/s: H100 SXM and H200 share the chip (GH100).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}
SUBJECTS = ["a lighthouse", "a red bicycle", "a bowl of ramen", "an old oak tree", "a city at night"]
STYLES = ["at dawn", "in watercolour", "as a photograph", "in the snow", "in a studio"]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for chip, peak in PEAK_BF16.items() if chip in name), None)


def flops_per_image(config: Config) -> dict[str, float]:
    """FLOPs to make one image: UNet per step (both guidance halves), all steps, VAE decode,
    text encoder (prompt and negative), counted by PyTorch's FlopCounterMode on one call each."""
    gen = config.generator
    pipe = load_pipeline(gen)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    side = (gen.height or 512) // pipe.vae_scale_factor
    latents = torch.randn(2, 4, side, side, device=device, dtype=dtype)
    tokens = torch.zeros(2, 77, dtype=torch.long, device=device)
    counts = {}
    with torch.inference_mode():
        context = pipe.text_encoder(tokens)[0]
        for name, call in {
            "unet_step": lambda: pipe.unet(latents, 500, encoder_hidden_states=context),
            "vae_decode": lambda: pipe.vae.decode(latents[:1]),
            "text_encoder": lambda: pipe.text_encoder(tokens),
        }.items():
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            counts[name] = float(counter.get_total_flops())
    counts["unet_all_steps"] = counts["unet_step"] * gen.steps
    counts["total"] = counts["unet_all_steps"] + counts["vae_decode"] + counts["text_encoder"]
    return counts


# GPU speed settings measured against the plain winnow run at the best batch size.
SETTINGS = {
    "channels_last": {"channels_last": True},
    "channels_last+compile": {"channels_last": True, "compile": True},
}


def speed_settings(base: dict, prompt_file: Path, batch: int, row, plain: dict) -> dict:
    """winnow at ``batch`` with each of ``SETTINGS``; ``ratio_vs_plain`` > 1 is faster. The
    first run of each (model load, torch.compile's compilation) is an uncounted warm-up."""
    out = {}
    prompts = max(4, 2 * batch // base["run"]["candidates"])
    for name, extra in SETTINGS.items():
        measure(LOOPS["winnow"], workload(base, prompt_file, 1, batch, **extra))
        timing = row(measure(LOOPS["winnow"], workload(base, prompt_file, prompts, batch, **extra)))
        out[name] = timing | {"ratio_vs_plain": round(timing["images_per_s"] / plain["images_per_s"], 4)}
        print(name, out[name], flush=True)
    return out


def pruning(base: dict, prompt_file: Path, batch: int, row, prompts: int, at: float, taesd: Path) -> dict:
    """Seconds per candidate with early pruning (``prune: {at, drop: 0.625}``) against the
    same run unpruned, all with DPM-Solver++ (PNDM keeps no x0 estimate to preview); the
    previews decoded by the pipeline's VAE, and by a TAESD-architecture ``AutoencoderTiny``
    (``prune.preview``). Also each preview decoder's FLOPs per image."""
    dpm = {"scheduler": "DPMSolverMultistepScheduler"}
    config = PruneConfig(at=at, drop=0.625)
    prune = config.model_dump()
    runs = {
        "plain": base,
        "pruned": base | {"prune": prune},
        "pruned_tiny_preview": base | {"prune": prune | {"preview": str(taesd)}},
    }
    out = {}
    for name, data in runs.items():
        measure(LOOPS["winnow"], workload(data, prompt_file, 1, batch, **dpm))
        out[name] = row(measure(LOOPS["winnow"], workload(data, prompt_file, prompts, batch, **dpm)))
        print(name, out[name], flush=True)
    steps, n = base["generator"]["steps"], base["run"]["candidates"]
    step, finish = config.step(steps), config.survivors(n)
    for name in ("pruned", "pruned_tiny_preview"):
        out[f"speedup_seconds_{name}"] = round(out["plain"]["seconds"] / out[name]["seconds"], 4)
    out["speedup_unet_steps"] = round(steps * n / (step * n + (steps - step) * finish), 4)
    generator = workload(runs["pruned_tiny_preview"], prompt_file, 1, batch, **dpm).config.generator
    pipe, tiny = load_pipeline(generator), load_preview_decoder(str(taesd), generator)
    side = (generator.height or 512) // pipe.vae_scale_factor
    latents = torch.randn(1, 4, side, side, device=pipe.vae.device, dtype=pipe.vae.dtype)
    for name, decoder in (("vae", pipe.vae), ("tiny", tiny)):
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            decoder.decode(latents)
        out[f"preview_flops_{name}"] = float(counter.get_total_flops())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument("--batch-sizes", default="1,4,8,16" if not TINY else "1,4")
    parser.add_argument("--candidates", type=int, default=8)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="winnow-gpu-"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sd = build_sd15(tmp / "sd15", tiny=TINY, device=device)
    spec, head = build_clip_and_head(tmp / "clip", tiny=TINY)
    prompt_file = tmp / "prompts.txt"
    prompt_file.write_text("\n".join(f"{s} {t}" for t in STYLES for s in SUBJECTS) + "\n")
    clip = {"model": spec.model, "pretrained": spec.pretrained}
    size = 64 if TINY else 512
    square = {"width": size, "height": size}
    base = {
        "prompts": {"path": str(prompt_file)},
        "generator": {"model": str(sd), "steps": 2 if TINY else 25, "guidance": 7.5} | square,
        "scorers": {"clip_score": {"clip": clip}, "aesthetic": {"clip": clip, "head": str(head)}},
        "select": {"keep": 2},
        "run": {"candidates": args.candidates, "out": str(tmp / "catalog")},
    }
    n = args.candidates

    first = workload(base, prompt_file, 1, 1)
    flops = flops_per_image(first.config)
    torch_device = torch.device(device)
    peak = peak_flops(torch_device)
    tera = {k: round(v / 1e12, 2) for k, v in flops.items()}
    print(f"TFLOP per image: {tera['total']} (UNet {tera['unet_all_steps']})", flush=True)

    def row(timing: Timing) -> dict:
        out = timing.as_dict()
        if peak:
            out["mfu"] = round(timing.images_per_s * flops["total"] / peak, 4)
            out["mfu_unet"] = round(timing.images_per_s * flops["unet_all_steps"] / peak, 4)
        return out

    # Warm-up (uncounted): model loads, kernel selection, allocator growth, for every path.
    for loop in LOOPS.values():
        measure(loop, workload(base, prompt_file, 1, min(n, 4)))
    # The notebook makes one image per call whatever the batch size: measured once.
    results: dict = {"notebook": row(measure(LOOPS["notebook"], workload(base, prompt_file, 1, 1)))}
    print("notebook", results["notebook"], flush=True)
    sweep = {}
    for b in (int(x) for x in args.batch_sizes.split(",")):
        work = workload(base, prompt_file, max(4, 2 * b // n), b)  # >= 4 prompts, >= 2 calls
        measure(LOOPS["bound"], workload(base, prompt_file, 1, b))  # this batch shape's first call
        sweep[b] = {name: row(measure(LOOPS[name], work)) for name in ("bound", "winnow")}
        sweep[b]["ratio_winnow_vs_bound"] = round(
            sweep[b]["winnow"]["images_per_s"] / sweep[b]["bound"]["images_per_s"], 4
        )
        sweep[b]["ratio_winnow_vs_notebook"] = round(
            sweep[b]["winnow"]["images_per_s"] / results["notebook"]["images_per_s"], 4
        )
        print(b, sweep[b], flush=True)
    best = max(sweep, key=lambda b: sweep[b]["winnow"]["images_per_s"])
    results["settings"] = speed_settings(base, prompt_file, best, row, sweep[best]["winnow"])
    taesd = build_taesd(tmp / "taesd", tiny=TINY)
    results["pruning"] = pruning(base, prompt_file, best, row, *((2, 0.5) if TINY else (10, 0.2)), taesd)
    results |= {
        "machine": {
            "device": torch.cuda.get_device_name(torch_device) if device == "cuda" else platform.processor(),
            "torch": torch.__version__,
            "peak_bf16_flops": peak,
        },
        "workload": {
            "model": "SD 1.5 architecture, random weights" + (" (tiny)" if TINY else ""),
            "size": size,
            "steps": base["generator"]["steps"],
            "guidance": 7.5,
            "dtype": str(load_pipeline(first.config.generator).unet.dtype).removeprefix("torch."),
            "scoring": "ViT-L-14 CLIP score + LAION-layout aesthetic head" + (" (tiny)" if TINY else ""),
            "candidates_per_prompt": n,
            "keep": 2,
        },
        "flops_per_image": flops,
        "batch_sweep": sweep,
        "best_batch_size": best,
        "winnow": sweep[best]["winnow"],
        "bound": sweep[best]["bound"],
        "ratio_winnow_vs_bound": sweep[best]["ratio_winnow_vs_bound"],
        "ratio_winnow_vs_notebook": sweep[best]["ratio_winnow_vs_notebook"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'batch':>5} {'bound img/s':>12} {'winnow img/s':>13} {'b/c':>6} {'MFU':>6}")
    for b, r in sweep.items():
        mfu = r["winnow"].get("mfu", float("nan"))
        print(
            f"{b:>5} {r['bound']['images_per_s']:>12.2f} {r['winnow']['images_per_s']:>13.2f}"
            f" {r['ratio_winnow_vs_bound']:>6.3f} {mfu:>6.3f}"
        )
    for name, r in results["settings"].items():
        print(f"{name}: {r['images_per_s']:.2f} img/s, x{r['ratio_vs_plain']:.3f} vs plain")
    p = results["pruning"]
    print(
        f"pruning: {p['speedup_unet_steps']:.2f}x fewer UNet steps; seconds: "
        f"{p['speedup_seconds_pruned']:.2f}x fewer with VAE previews, "
        f"{p['speedup_seconds_pruned_tiny_preview']:.2f}x with tiny-decoder previews"
    )
    print(f"notebook {results['notebook']['images_per_s']:.2f} img/s; wrote {args.out}")


if __name__ == "__main__":
    main()
