"""Train every bundled shapes model, in order, and write ``models/shapes/weights``.

    python -m models.shapes.train            # full run (seeded, CPU, ~48 min on 2 free cores)
    python -m models.shapes.train --scale 0.05 --out /tmp/shapes-smoke   # smoke test

Stages (each checkpointed under ``--work`` so a later stage can be re-run with ``--start``):
vae -> diffusion -> decoder (fine-tune) -> samples (oracle-labelled generations for the CLIP) -> clip
-> aesthetic
-> export (fp16 safetensors) -> evaluate (from the exported files).
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
from diffusers import AutoencoderKL, StableDiffusionPipeline

from models.shapes import WEIGHTS_DIR, oracle
from models.shapes.data import FULL_CAPTIONS, SCENE_INDEX, SHORT_CAPTIONS, render_pool, seed_everything
from models.shapes.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS, generate
from models.shapes.train_aesthetic import AestheticConfig, save_aesthetic, train_aesthetic
from models.shapes.train_clip import ClipConfig, build_clip, save_clip, train_clip
from models.shapes.train_diffusion import DiffusionConfig, make_pipeline, train_diffusion
from models.shapes.train_vae import (
    DecoderConfig,
    VaeConfig,
    finetune_decoder,
    reconstruct,
    train_vae,
)
from models.tokenizer import build_clip_tokenizer

STAGES = ("vae", "diffusion", "decoder", "samples", "clip", "aesthetic", "export", "evaluate")
SEED = 1234
N_RENDERS = 20_000
N_RECON = 4096
N_GENERATED = 1536


def log(msg: str) -> None:
    """Timestamped progress line (flushed, for nohup logs)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the weights go")
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
    timings: dict[str, float] = {}

    if "vae" in run:
        t0 = time.time()
        seed_everything(SEED + 1)
        cfg = VaeConfig()
        vae = train_vae(images, replace(cfg, steps=steps(cfg.steps)), device, log, SEED + 1)
        vae.save_pretrained(work / "vae")
        timings["vae"] = time.time() - t0
    vae = AutoencoderKL.from_pretrained(work / "vae").to(device).eval()

    if "diffusion" in run:
        t0 = time.time()
        seed_everything(SEED + 2)
        tokenizer = build_clip_tokenizer(work / "tokenizer")
        dcfg = DiffusionConfig()
        unet, text_encoder = train_diffusion(
            vae, tokenizer, images, ids, replace(dcfg, steps=steps(dcfg.steps)), device, log, SEED + 2
        )
        make_pipeline(vae, unet, text_encoder, tokenizer).save_pretrained(work / "pipe")
        timings["diffusion"] = time.time() - t0

    if "decoder" in run:
        t0 = time.time()
        seed_everything(SEED + 6)
        dc = DecoderConfig()
        for cycle in range(dc.cycles):
            dcc = replace(dc, steps=steps(dc.steps))
            vae = finetune_decoder(vae, images, dcc, device, log, SEED + 6 + cycle)
        vae.save_pretrained(work / "vae_ft")
        timings["decoder"] = time.time() - t0
    if (work / "vae_ft").exists():
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
        for k, g in enumerate((2.0, 4.0, 6.0)):  # varied guidance -> varied sample quality
            part = prompts[k::3]
            seeds = [SEED * 1000 + k * 100_000 + i for i in range(len(part))]
            chunks.append(generate(pipe, part, seeds, steps=15, guidance=g, batch=128))
        gen_x, gen_y = label_by_oracle(np.concatenate(chunks))
        rec_x, rec_y = label_by_oracle(reconstruct(vae, images[:N_RECON]))
        np.savez_compressed(work / "pools.npz", gen_x=gen_x, gen_y=gen_y, rec_x=rec_x, rec_y=rec_y)
        log(f"samples: {len(gen_x)}/{n_gen} generated readable, {len(rec_x)}/{N_RECON} recon")
        timings["samples"] = time.time() - t0

    if "clip" in run:
        t0 = time.time()
        seed_everything(SEED + 4)
        pools = np.load(work / "pools.npz")
        ccfg = ClipConfig()
        clip = train_clip(
            (images, ids),
            (pools["rec_x"], pools["rec_y"]),
            (pools["gen_x"], pools["gen_y"]),
            replace(ccfg, steps=steps(ccfg.steps)),
            device,
            log,
            SEED + 4,
        )
        torch.save(clip.state_dict(), work / "clip.pt")
        timings["clip"] = time.time() - t0
    clip = build_clip().to(device)
    if (work / "clip.pt").exists():
        clip.load_state_dict(torch.load(work / "clip.pt", weights_only=True))
    clip.eval()

    if "aesthetic" in run:
        t0 = time.time()
        seed_everything(SEED + 5)
        acfg = AestheticConfig()
        head = train_aesthetic(clip, images, replace(acfg, epochs=steps(acfg.epochs)), log, SEED + 5)
        save_aesthetic(head, work / "aesthetic.safetensors")
        timings["aesthetic"] = time.time() - t0

    if "export" in run:
        out: Path = args.out
        if (out / "sd").exists():
            shutil.rmtree(out / "sd")
        out.mkdir(parents=True, exist_ok=True)
        pipe = StableDiffusionPipeline.from_pretrained(work / "pipe", vae=vae)
        pipe = pipe.to(torch.float16)
        pipe.save_pretrained(out / "sd", safe_serialization=True)
        save_clip(clip.cpu(), out / "clip")
        shutil.copyfile(work / "aesthetic.safetensors", out / "aesthetic.safetensors")
        total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        log(f"export: {total / 1e6:.1f} MB under {out}")

    if timings:
        log("stage times (s): " + json.dumps({k: round(v) for k, v in timings.items()}))

    if "evaluate" in run:
        from models.shapes import evaluate as ev
        from models.shapes.load import load_aesthetic, load_clip, load_pipeline

        t0 = time.time()
        pipe = load_pipeline(args.out / "sd")
        model, _, _ = load_clip(args.out / "clip", args.out / "clip" / "shapes-clip.safetensors")
        head = load_aesthetic(args.out / "aesthetic.safetensors")
        metrics = {
            "vae_roundtrip": ev.vae_roundtrip(pipe.vae),
            "clip_zero_shot": ev.clip_zero_shot(model),
            "aesthetic": ev.aesthetic_spearman(model, head),
            "best_of_8": ev.best_of_n(pipe, model, steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE),
            "images_per_s_batch16": ev.sampling_speed(pipe),
        }
        log("metrics: " + json.dumps(metrics))
        log(f"evaluate: {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
