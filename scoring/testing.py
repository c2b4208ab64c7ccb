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


def build_small_clip_tokenizer(out_dir: str | Path, merges: int = 256):
    """A transformers ``CLIPTokenizer`` with CLIP's BPE cut to its first ``merges`` merges
    (a valid, smaller BPE: 512 byte tokens + ``merges`` + the two special tokens), saved into
    ``out_dir`` as ``vocab.json`` + ``merges.txt``. Any text still tokenises (into smaller
    pieces); ``<|endoftext|>`` keeps the highest id, as in CLIP."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as bpe:
        kept = bpe.read().split("\n")[1 : 1 + merges]
    byte_chars = list(bytes_to_unicode().values())
    vocab = [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(m.split()) for m in kept)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(kept) + "\n")
    return CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77)


# A PickScore-shaped CLIPModel: CLIP-H's layout (pre-LN ViT with a class token, causal text
# transformer pooled at the end token, bias-free projections, a learnt logit scale) at toy widths.
TINY_PICKSCORE_VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64}
TINY_PICKSCORE_TEXT = {"hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 77}
for _tower in (TINY_PICKSCORE_VISION, TINY_PICKSCORE_TEXT):
    _tower.update(num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu")


def build_tiny_pickscore(out_dir: str | Path, seed: int = 0, merges: int = 256) -> Path:
    """Write a random PickScore-layout model into ``out_dir``: ``CLIPModel.save_pretrained``
    (config.json + model.safetensors) beside its processor files as the LAION processor repo
    has them (preprocessor_config.json; vocab.json + merges.txt of a small tokenizer from
    ``build_small_clip_tokenizer``, and tokenizer.json), 32x32 input. Returns the folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(out_dir)
    tokenizer = build_small_clip_tokenizer(out, merges)
    text = {**TINY_PICKSCORE_TEXT, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = CLIPConfig(text_config=text, vision_config=TINY_PICKSCORE_VISION, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
        # A scale other than the init's, so the tests see it applied.
        model.logit_scale.data.fill_(3.0)
    model.save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_hpsv2(out_dir: str | Path, seed: int = 0, name: str = "winnow-tiny-hps") -> tuple[Path, Path]:
    """Write a random open_clip CLIP (``TINY_CLIP_CONFIG``) as an HPS v2.1 checkpoint: a pickle
    of ``{"state_dict": {...}}`` with open_clip's key names, as ``HPS_v2.1_compressed.pt`` is.
    Returns (model-config .json, checkpoint .pt); ``name`` is the architecture name."""
    from open_clip.model import CLIP

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path, weights_path = out / f"{name}.json", out / "HPS_v2.1_compressed.pt"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**TINY_CLIP_CONFIG)
    torch.save({"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}, weights_path)
    return config_path, weights_path
