"""CPU throughput on the bundled shapes models: notebook vs winnow vs bound, measured side by side
in one process, plus how winnow's cost grows with N and with the prompt count.

    python -m bench.cpu                      # bundled:shapes-sd, 64 prompts x 8 -> bench/results/cpu.json
    python -m bench.cpu --small --prompts 4  # tiny random models (before the shapes weights exist)

Ratios are the point: absolute images/s depend on the machine (and on whatever else it runs;
the load average at the start is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bench.loops import LOOPS, Timing, Workload, measure, workload


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def models(small: bool, tmp: Path, weights: Path | None) -> tuple[dict, dict, list[str]]:
    """(generator keys, scorers section, prompts): the shapes models (bundled, or from a
    ``weights`` folder laid out like ``models/shapes/weights``), or tiny random ones."""
    if small:
        from winnow.models.testing import build_tiny_pipeline
        from winnow.scoring.testing import build_tiny_aesthetic_head, build_tiny_clip

        spec = build_tiny_clip(tmp / "clip")
        clip = {"model": spec.model, "pretrained": spec.pretrained}
        head = str(build_tiny_aesthetic_head(tmp / "head.safetensors", dim=32))
        generator = {"model": str(build_tiny_pipeline(tmp / "sd")), "steps": 4, "guidance": 5.0}
        prompts = [f"a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square")]
    else:
        from winnow.models.shapes.world import all_captions

        if weights:
            clip = {"model": str(weights / "clip/shapes-clip.json")}
            clip["pretrained"] = str(weights / "clip/shapes-clip.safetensors")
            head, model = str(weights / "aesthetic.safetensors"), str(weights / "sd")
        else:
            clip, head = {"model": "bundled:shapes-clip"}, "bundled:shapes-aesthetic"
            model = "bundled:shapes-sd"
        generator = {"model": model, "steps": 20, "guidance": 5.0}
        prompts = all_captions()
    scorers = {"clip_score": {"clip": clip}, "aesthetic": {"clip": clip, "head": head}}
    return generator, scorers, prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny random models instead of shapes")
    parser.add_argument("--weights", type=Path, help="a folder laid out like models/shapes/weights")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=8, help="N per prompt")
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, help="denoising steps (default: 20 shapes, 4 small)")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 when other jobs load the CPU"
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the N / prompt-count table")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu.json"))
    args = parser.parse_args()

    load = os.getloadavg()[0]
    if args.threads:
        # With other processes busy, torch's spinning worker threads wait on each other at every
        # op; one thread can then be 10x faster. All three loops run under the same setting.
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="winnow-cpu-"))
    generator, scorers, prompts = models(args.small, tmp, args.weights)
    if args.steps:
        generator["steps"] = args.steps
    prompt_file = tmp / "prompts.txt"
    prompt_file.write_text("\n".join(prompts[i % len(prompts)] for i in range(args.prompts)) + "\n")
    base = {
        "prompts": {"path": str(prompt_file)},
        "generator": generator,
        "scorers": scorers,
        "select": {"keep": args.keep},
        "run": {"candidates": args.candidates, "out": str(tmp / "catalog")},
    }

    def work(prompts: int, candidates: int) -> Workload:
        # Shards of 8 prompts, as a default run plans them.
        run = {**base["run"], "candidates": candidates, "shard_size": min(8, prompts)}
        return workload(base | {"run": run}, prompt_file, prompts, args.batch_size)

    # Warm-up (uncounted): model loads and first calls of every loop.
    for loop in LOOPS.values():
        measure(loop, work(1, 2))
    main_work = work(args.prompts, args.candidates)
    shard, names = main_work.config.run.shard_size, list(LOOPS)
    parts: dict[str, list[Timing]] = {name: [] for name in LOOPS}
    # Interleaved one shard of prompts at a time, in rotating order, so changes in the machine's
    # load (other jobs) hit the three loops alike, not whichever ran during a busy spell.
    for i, start in enumerate(range(0, len(main_work.prompts), shard)):
        piece = Workload(main_work.config, main_work.prompts[start : start + shard])
        for name in names[i % 3 :] + names[: i % 3]:
            parts[name].append(measure(LOOPS[name], piece))
    results: dict = {name: Timing.total(timings).as_dict() for name, timings in parts.items()}
    for name in LOOPS:
        print(name, results[name], flush=True)
    speed = {name: results[name]["images_per_s"] for name in LOOPS}
    results["ratio_winnow_vs_bound"] = round(speed["winnow"] / speed["bound"], 4)
    results["ratio_winnow_vs_notebook"] = round(speed["winnow"] / speed["notebook"], 4)
    results["machine"] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": round(load, 2),
        "torch": torch.__version__,
    }
    results["workload"] = {
        "model": "tiny random (winnow.models.testing)" if args.small else generator["model"],
        "prompts": args.prompts,
        "candidates_per_prompt": args.candidates,
        "keep": args.keep,
        "batch_size": args.batch_size,
        "steps": generator["steps"],
        "guidance": generator["guidance"],
        "shard_size": shard,
    }
    if not args.no_scaling:
        results["scaling"] = scaling(work, args.prompts, args.candidates, args.keep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("notebook", "winnow", "bound")}, indent=1))
    print(f"winnow/bound {results['ratio_winnow_vs_bound']}", end=", ")
    print(f"winnow/notebook {results['ratio_winnow_vs_notebook']}")
    for row in results.get("scaling", []):
        print(row)
    print(f"wrote {args.out}")


def scaling(work: Callable[[int, int], Workload], prompts: int, candidates: int, keep: int) -> list[dict]:
    """winnow's cost as N grows (a quarter of the prompts) and as the prompt count grows (N fixed)."""
    fewer = max(1, prompts // 4)
    grid = [(fewer, n) for n in (2, 4, 8, 16)] + [(p, candidates) for p in (8, 16, 32, 64) if p <= prompts]
    rows = []
    for p, n in grid:
        t = measure(LOOPS["winnow"], work(p, n))
        kept = p * min(keep, n)
        rows.append(
            {
                "prompts": p,
                "candidates": n,
                "images": t.images,
                "seconds": round(t.seconds, 3),
                "images_per_s": round(t.images_per_s, 3),
                "seconds_per_kept_image": round(t.seconds / kept, 4),
                "peak_mib": round(t.peak_mib, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
