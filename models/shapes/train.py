"""Train every bundled shapes model, in order, and write ``models/shapes/weights``.

    python -m winnow.models.shapes.train            # full run (seeded, CPU, ~46 min on 2 free cores)
    python -m winnow.models.shapes.train --scale 0.005 --stop export \
        --work /tmp/shapes-smoke --out /tmp/shapes-smoke/out        # smoke test (~3 min)

Stages (each checkpointed under ``--work`` so a later stage can be re-run with ``--start``):
vae -> diffusion -> decoder (fine-tune) -> samples (oracle-labelled generations for the CLIP)
-> clip -> aesthetic -> export (fp16 safetensors) -> preview (a tiny decoder for pruning
previews, distilled from the exported pipeline's VAE) -> pick (a PickScore-style preference
model fine-tuned from the CLIP on oracle-judged pairs) -> evaluate (from the exported files,
loaded through winnow's own loaders). Wall time and seconds per step of each stage go to
``<work>/timings.json``, the evaluate stage's metrics to ``<work>/metrics.json``.
"""

from __future__ import annotations

import os

# Passive OpenMP waiting: on a shared 2-core machine, spinning worker threads slow training
# 5-10x whenever another process runs; must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline

from winnow.models.generator import GeneratorParams, load_pipeline
from winnow.models.shapes import evaluate as ev
from winnow.models.shapes import oracle, train_pick
from winnow.models.shapes.data import FULL_CAPTIONS, SCENE_INDEX, SHORT_CAPTIONS, render_pool, seed_everything
from winnow.models.shapes.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS, generate
from winnow.models.shapes.train_aesthetic import AestheticConfig, save_aesthetic, train_aesthetic
from winnow.models.shapes.train_clip import ClipConfig, save_clip, train_clip
from winnow.models.shapes.train_diffusion import DiffusionConfig, make_pipeline, train_diffusion
from winnow.models.shapes.train_preview import PreviewConfig, train_preview
from winnow.models.shapes.train_vae import DecoderConfig, VaeConfig, finetune_decoder, reconstruct, train_vae
from winnow.models.sources import BUNDLED_ROOT
from winnow.models.tokenizer import build_clip_tokenizer
from winnow.scoring.aesthetic import AestheticHead
from winnow.scoring.clip import ClipSpec, clear_cache, load_clip

STAGES = (
    "vae",
    "diffusion",
    "decoder",
    "samples",
    "clip",
    "aesthetic",
    "export",
    "preview",
    "pick",
    "evaluate",
)
SEED = 1234
N_RENDERS = 20_000
N_RECON = 4096
N_GENERATED = 1536
SAMPLE_GUIDANCE = (1.5, 2.5, 4.0)  # generations for the CLIP: the demo's 1.5 and sharper
CLIP_NAME = "shapes-clip"  # open_clip architecture name = file stem in the clip folder


def log(msg: str) -> None:
    """Timestamped progress line (flushed, for nohup logs)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Timings:
    """Wall time and seconds per step of each stage run, merged into a JSON file under
    ``--work`` (so stages re-run separately keep one record)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stages: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.exists() else {}

    def record(self, stage: str, began: float, steps: int) -> None:
        """Store ``stage``'s wall seconds since ``began`` and the per-step rate over ``steps``."""
        wall = time.time() - began
        self.stages[stage] = {"wall_s": round(wall, 1), "steps": steps, "s_per_step": round(wall / steps, 3)}
        self.path.write_text(json.dumps(self.stages, indent=2) + "\n")
        log(f"{stage}: {wall:.0f}s ({wall / steps:.3f} s/step over {steps})")


def label_by_oracle(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the images the oracle can read, labelled with the scene id it reads."""
    keep, ids = [], []
    for i, im in enumerate(images):
        r = oracle.read(im)
        if r != oracle.UNREADABLE:
            keep.append(i)
            ids.append(SCENE_INDEX[r])
    return images[keep], np.asarray(ids, dtype=np.int64)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=BUNDLED_ROOT, help="where the weights go")
    ap.add_argument("--work", type=Path, default=Path("/tmp/shapes-train"), help="checkpoints")
    ap.add_argument("--start", choices=STAGES, default="vae", help="first stage to run")
    ap.add_argument("--stop", choices=STAGES, default="evaluate", help="last stage to run")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    run = STAGES[STAGES.index(args.start) : STAGES.index(args.stop) + 1]

    def steps(n: int) -> int:
        return max(2, round(n * args.scale))

    seed_everything(SEED)
    images, ids = render_pool(N_RENDERS, SEED)
    timings = Timings(work / "timings.json")

    if "vae" in run:
        t0 = time.time()
        seed_everything(SEED + 1)
        vcfg = replace(VaeConfig(), steps=steps(VaeConfig().steps))
        vae = train_vae(images, vcfg, device, log, SEED + 1)
        vae.save_pretrained(work / "vae")
        timings.record("vae", t0, vcfg.steps)
    if {"diffusion", "decoder", "samples", "export"} & set(run):  # the stages that need the VAE
        vae = AutoencoderKL.from_pretrained(work / "vae").to(device).eval()

    if "diffusion" in run:
        t0 = time.time()
        seed_everything(SEED + 2)
        tokenizer = build_clip_tokenizer(work / "tokenizer")
        dcfg = replace(DiffusionConfig(), steps=steps(DiffusionConfig().steps))
        unet, text_encoder = train_diffusion(vae, tokenizer, images, ids, dcfg, device, log, SEED + 2)
        make_pipeline(vae, unet, text_encoder, tokenizer).save_pretrained(work / "pipe")
        timings.record("diffusion", t0, dcfg.steps)

    if "decoder" in run:
        t0 = time.time()
        seed_everything(SEED + 6)
        fcfg = replace(DecoderConfig(), steps=steps(DecoderConfig().steps))
        vae = finetune_decoder(vae, images, fcfg, device, log, SEED + 6)
        vae.save_pretrained(work / "vae_ft")
        timings.record("decoder", t0, fcfg.steps * fcfg.cycles)
    elif (work / "vae_ft").exists():  # a later --start: the fine-tuned decoder from disk
        vae = AutoencoderKL.from_pretrained(work / "vae_ft").to(device).eval()

    if "samples" in run:
        t0 = time.time()
        pipe = StableDiffusionPipeline.from_pretrained(work / "pipe", vae=vae).to(device)
        pipe.set_progress_bar_config(disable=True)
        rng = np.random.default_rng(SEED + 3)
        n_gen = max(64, int(N_GENERATED * min(1.0, args.scale * 4)))
        captions = FULL_CAPTIONS + SHORT_CAPTIONS
        prompts = [captions[i] for i in rng.integers(0, len(captions), n_gen)]
        chunks = []
        for k, g in enumerate(SAMPLE_GUIDANCE):  # varied guidance -> varied sample quality
            part = prompts[k :: len(SAMPLE_GUIDANCE)]
            seeds = [SEED * 1000 + k * 100_000 + i for i in range(len(part))]
            chunks.append(generate(pipe, part, seeds, steps=15, guidance=g, batch=128))
        gen_x, gen_y = label_by_oracle(np.concatenate(chunks))
        rec_x, rec_y = label_by_oracle(reconstruct(vae, images[:N_RECON]))
        np.savez_compressed(work / "pools.npz", gen_x=gen_x, gen_y=gen_y, rec_x=rec_x, rec_y=rec_y)
        log(f"samples: {len(gen_x)}/{n_gen} generated readable, {len(rec_x)}/{N_RECON} recon")
        timings.record("samples", t0, n_gen)

    clip_dir = work / "clip"
    clip_spec = ClipSpec(
        model=str(clip_dir / f"{CLIP_NAME}.json"), pretrained=str(clip_dir / f"{CLIP_NAME}.safetensors")
    )
    if "clip" in run:
        t0 = time.time()
        seed_everything(SEED + 4)
        pools = np.load(work / "pools.npz")
        ccfg = replace(ClipConfig(), steps=steps(ClipConfig().steps))
        clip = train_clip(
            (images, ids),
            (pools["rec_x"], pools["rec_y"]),
            (pools["gen_x"], pools["gen_y"]),
            ccfg,
            device,
            log,
            SEED + 4,
        )
        save_clip(clip.cpu(), clip_dir, CLIP_NAME)
        clear_cache()  # a CLIP loaded from clip_dir earlier in this process is stale now
        timings.record("clip", t0, ccfg.steps)

    if "aesthetic" in run:
        t0 = time.time()
        seed_everything(SEED + 5)
        acfg = replace(AestheticConfig(), epochs=steps(AestheticConfig().epochs))
        head = train_aesthetic(clip_spec, images, acfg, log, SEED + 5)
        save_aesthetic(head, work / "aesthetic.safetensors")
        timings.record("aesthetic", t0, acfg.epochs)

    if "export" in run:
        out: Path = args.out
        if (out / "sd").exists():
            shutil.rmtree(out / "sd")
        out.mkdir(parents=True, exist_ok=True)
        pipe = StableDiffusionPipeline.from_pretrained(work / "pipe", vae=vae)
        pipe = pipe.to(torch.float16)
        pipe.save_pretrained(out / "sd", safe_serialization=True)
        shutil.copytree(clip_dir, out / "clip", dirs_exist_ok=True)
        shutil.copyfile(work / "aesthetic.safetensors", out / "aesthetic.safetensors")
        total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        log(f"export: {total / 1e6:.1f} MB under {out}")

    if "preview" in run:
        t0 = time.time()
        seed_everything(SEED + 7)
        pcfg = replace(PreviewConfig(), steps=steps(PreviewConfig().steps))
        pipe = load_pipeline(GeneratorParams(model=str(args.out / "sd"), device=args.device))
        rng = np.random.default_rng(SEED + 7)
        n_gen = max(64, int(pcfg.candidates * min(1.0, args.scale * 4)))
        captions = FULL_CAPTIONS + SHORT_CAPTIONS
        prompts = [captions[i] for i in rng.integers(0, len(captions), n_gen)]
        seeds = [SEED * 2000 + i for i in range(n_gen)]
        preview = train_preview(pipe, prompts, seeds, pcfg, log, SEED + 7, DEFAULT_STEPS, DEFAULT_GUIDANCE)
        preview.half().save_pretrained(args.out / "preview", safe_serialization=True)
        # AutoencoderTiny registers `block_out_channels` in its config but does not accept it
        # back, so loading would warn; TAESD's own config has no such key either.
        config = json.loads((args.out / "preview" / "config.json").read_text())
        config.pop("block_out_channels", None)
        (args.out / "preview" / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        timings.record("preview", t0, pcfg.steps)

    if "pick" in run:
        t0 = time.time()
        seed_everything(SEED + 8)
        kcfg = replace(train_pick.PickConfig(), steps=steps(train_pick.PickConfig().steps))
        pipe = load_pipeline(GeneratorParams(model=str(args.out / "sd"), device=args.device))
        x, prompts, pairs = train_pick.generate_choices(pipe, kcfg, SEED * 3000, log)
        exported = args.out / "clip" / CLIP_NAME
        clip = load_clip(ClipSpec(model=f"{exported}.json", pretrained=f"{exported}.safetensors"), "cpu")
        model, tokenizer = train_pick.to_transformers(clip.model, args.out / "pick", train_pick.all_texts())
        model = train_pick.train_pick(model, tokenizer, x, prompts, pairs, kcfg, log, SEED + 8)
        train_pick.save_pick(model, args.out / "pick")
        size = sum(f.stat().st_size for f in (args.out / "pick").iterdir())
        log(f"pick: {size / 1e6:.2f} MB under {args.out / 'pick'}")
        timings.record("pick", t0, kcfg.steps)

    if "evaluate" in run:
        t0 = time.time()
        metrics = evaluate_exported(args.out)
        log("metrics: " + json.dumps(metrics))
        (work / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        timings.record("evaluate", t0, 1)
    log("stage times: " + json.dumps(timings.stages))


def evaluate_exported(out: Path) -> dict[str, object]:
    """Every quality measure of the exported (fp16) files, loaded as winnow loads them."""
    pipe = load_pipeline(GeneratorParams(model=str(out / "sd"), device="cpu"))
    spec = ClipSpec(
        model=str(out / "clip" / f"{CLIP_NAME}.json"),
        pretrained=str(out / "clip" / f"{CLIP_NAME}.safetensors"),
    )
    head = AestheticHead.from_file(out / "aesthetic.safetensors")
    preview = AutoencoderTiny.from_pretrained(out / "preview", dtype=torch.float32).eval()
    return {
        "vae_roundtrip": ev.vae_roundtrip(pipe.vae),
        "clip_zero_shot": ev.clip_zero_shot(spec),
        "aesthetic": ev.aesthetic_spearman(spec, head),
        "best_of_8": ev.best_of_n(pipe, spec, steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE),
        "preview_psnr_db": ev.preview_psnr(pipe, preview),
        "images_per_s_batch16": ev.sampling_speed(pipe),
    }


if __name__ == "__main__":
    main()
