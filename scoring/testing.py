"""Tiny random-weight models for tests (diffusers-style: small config, fixed seed, CPU).

``build_tiny_clip`` writes an open_clip model-config JSON plus a safetensors checkpoint and
returns the ``ClipSpec`` that loads them; ``build_tiny_aesthetic_head`` writes a head in the
LAION state-dict layout. Both are deterministic for a given seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch
from safetensors.torch import save_file

from winnow.scoring.clip import ClipSpec

# embed 32, ViT 32x32 px / patch 8 / 2 layers / 2 heads, text 2 layers / 2 heads. The token
# table (49,408 x 32) dominates the ~6.5 MB checkpoint; the vocabulary must stay OpenAI's so
# the stock open_clip tokenizer works.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_clip(out_dir: str | Path, seed: int = 0, name: str = "winnow-tiny-clip") -> ClipSpec:
    """Write ``<name>.json`` and ``<name>.safetensors`` into ``out_dir``; return their spec.

    ``name`` is also the open_clip architecture name (registries are process-global, so use a
    distinct name for a distinct config).
    """
    from open_clip.model import CLIP  # lazy: importing open_clip takes seconds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path, weights_path = out / f"{name}.json", out / f"{name}.safetensors"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    # A private generator keeps the weights independent of the global RNG state of the test.
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        model = CLIP(**json.loads(config_path.read_text()))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path))
    return ClipSpec(model=str(config_path), pretrained=str(weights_path))


def build_tiny_aesthetic_head(
    path: str | Path, dim: int, hidden: Sequence[int] = (64, 32, 16, 8), seed: int = 0
) -> Path:
    """Write a random LAION-layout aesthetic head ``dim -> hidden... -> 1`` to ``path``.

    Layout as in the published file: Linear at ``layers.0, 2, 4, 6, 7`` with dropouts at 1, 3, 5
    (for four hidden widths). ``.safetensors`` or ``.pth`` (a plain state dict) by suffix.
    """
    if len(hidden) != 4:
        raise ValueError("the LAION layout has four hidden layers")
    widths = [dim, *hidden, 1]
    indices = [0, 2, 4, 6, 7]
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for idx, (fan_in, fan_out) in zip(indices, pairwise(widths), strict=True):
        bound = fan_in**-0.5  # nn.Linear's default init range
        state[f"layers.{idx}.weight"] = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound
        state[f"layers.{idx}.bias"] = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        save_file(state, str(out))
    else:
        torch.save(state, out)
    return out
