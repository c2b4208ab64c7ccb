"""Stage 10: ``shapes-pick``, a preference model trained the PickScore way.

PickScore fine-tunes a CLIP on pairs of images of one prompt that people chose between, with
the loss ``cross_entropy([s(p, chosen), s(p, rejected)], chosen)`` where
``s = logit_scale.exp() * cos(text, image)``. Here the shapes oracle stands in for the people:
the exported pipeline generates candidates of the *training* prompts at the demo's settings,
the oracle marks each right or wrong, and every (right, wrong) pair of one prompt is a choice.

The starting point is the shapes CLIP, converted from open_clip to a transformers
``CLIPModel`` (PickScore's format, what the ``pickscore`` scorer loads; the conversion is
exact, checked here). The token table is cut to the tokens the world's captions use (the BPE
merges on their path and the 512 byte tokens, so any text still tokenises): 49,408 rows down
to about 560, which keeps the model under 5 MB. ``HELDOUT_PROMPTS``, a seeded third of the
69 full captions, is never trained on: ``bench/quality.py`` measures on it.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from winnow.models.shapes import oracle
from winnow.models.shapes.data import FULL_CAPTIONS, SHORT_CAPTIONS, Log, cosine_lr
from winnow.models.shapes.evaluate import as_tensor, generate

HELDOUT_PROMPTS: list[str] = sorted(
    FULL_CAPTIONS[i] for i in np.random.default_rng(2024).choice(len(FULL_CAPTIONS), 23, replace=False)
)
TRAIN_PROMPTS: list[str] = [c for c in FULL_CAPTIONS if c not in HELDOUT_PROMPTS]


# transformers CLIPEncoderLayer names -> open_clip ResidualAttentionBlock names
_BLOCK_KEYS = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))  # fmt: skip


@dataclass(frozen=True)
class PickConfig:
    """Candidates per training prompt, their guidance scales, and the optimiser's budget."""

    candidates: int = 16
    guidance: tuple[float, ...] = (1.0, 1.5)  # the demo's 1.5 and a looser one (more wrong ones)
    steps: int = 200
    pairs: int = 48  # choices per step
    lr: float = 2e-5


def prune_vocabulary(texts: list[str]) -> tuple[list[str], list[str], list[int]]:
    """CLIP's BPE cut to what ``texts`` need: (vocab, merges, old id of each new id).

    Keeps the 512 byte tokens, every merge applied on the way to the words of ``texts`` (in
    their original order, so BPE takes the same path and ends in the same tokens) and the two
    special tokens, ``<|endoftext|>`` last (CLIP pools at the highest id)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as bpe:
        merges = bpe.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    ranks = {tuple(m.split()): r for r, m in enumerate(merges)}
    byte_chars = list(bytes_to_unicode().values())
    used: set[int] = set()
    for word in {w for t in texts for w in t.lower().split()}:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            rank, i = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(itertools.pairwise(parts)))
            if rank == math.inf:
                break
            used.add(int(rank))
            parts = [*parts[:i], parts[i] + parts[i + 1], *parts[i + 2 :]]
    kept = sorted(used)
    vocab = [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(merges[r].split()) for r in kept)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    old_ids = [*range(512), *(512 + r for r in kept), 49406, 49407]
    return vocab, [merges[r] for r in kept], old_ids


def to_transformers(clip, out: Path, texts: list[str]):  # (open_clip.CLIP, ...) -> CLIPModel
    """The open_clip shapes CLIP as a transformers ``CLIPModel`` (same numbers), with its
    processor (pruned tokenizer, 32x32 image processor) saved into ``out``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab, merges, old_ids = prune_vocabulary(texts)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(out)
    size = clip.visual.image_size[0]
    CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(out)

    v, t = clip.visual, clip.transformer
    vision = {
        "hidden_size": v.conv1.out_channels,
        "intermediate_size": v.transformer.resblocks[0].mlp.c_fc.out_features,
        "num_hidden_layers": len(v.transformer.resblocks),
        "num_attention_heads": v.transformer.resblocks[0].attn.num_heads,
        "image_size": size,
        "patch_size": v.conv1.kernel_size[0],
        "hidden_act": "gelu",  # open_clip's nn.GELU (the shapes CLIP has no quick_gelu)
    }
    text = {
        "vocab_size": len(vocab),
        "hidden_size": clip.token_embedding.embedding_dim,
        "intermediate_size": t.resblocks[0].mlp.c_fc.out_features,
        "num_hidden_layers": len(t.resblocks),
        "num_attention_heads": t.resblocks[0].attn.num_heads,
        "max_position_embeddings": clip.positional_embedding.shape[0],
        "hidden_act": "gelu",
        "bos_token_id": len(vocab) - 2,
        "eos_token_id": len(vocab) - 1,
        "pad_token_id": len(vocab) - 1,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=clip.text_projection.shape[1])
    src = {k: v.detach().float() for k, v in clip.state_dict().items()}
    state = {
        "logit_scale": src["logit_scale"],
        "visual_projection.weight": src["visual.proj"].T,
        "text_projection.weight": src["text_projection"].T,
        "vision_model.embeddings.class_embedding": src["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": src["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": src["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": src["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": src["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": src["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": src["visual.ln_post.bias"],
        "text_model.embeddings.token_embedding.weight": src["token_embedding.weight"][old_ids],
        "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
        "text_model.final_layer_norm.weight": src["ln_final.weight"],
        "text_model.final_layer_norm.bias": src["ln_final.bias"],
    }
    for tower, prefix, n in (("vision_model", "visual.transformer", vision["num_hidden_layers"]),
                             ("text_model", "transformer", text["num_hidden_layers"])):  # fmt: skip
        for i in range(n):
            a, b = f"{prefix}.resblocks.{i}", f"{tower}.encoder.layers.{i}"
            for name, w in zip("qkv", src[f"{a}.attn.in_proj_weight"].chunk(3), strict=True):
                state[f"{b}.self_attn.{name}_proj.weight"] = w
            for name, w in zip("qkv", src[f"{a}.attn.in_proj_bias"].chunk(3), strict=True):
                state[f"{b}.self_attn.{name}_proj.bias"] = w
            for ours, theirs in _BLOCK_KEYS:
                for p in ("weight", "bias"):
                    state[f"{b}.{ours}.{p}"] = src[f"{a}.{theirs}.{p}"]
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:  # only buffers may be left (position ids)
        assert all("position_ids" in k for k in missing) and not unexpected, (missing, unexpected)
    return model.eval(), tokenizer


def choices(images: np.ndarray, prompts: list[str]) -> list[tuple[int, int]]:
    """Every (right, wrong) pair of candidates of one prompt, as indices into ``images``."""
    right = np.asarray([oracle.adherence(im, p) for im, p in zip(images, prompts, strict=True)])
    pairs = []
    for prompt in dict.fromkeys(prompts):
        idx = [i for i, p in enumerate(prompts) if p == prompt]
        pairs += [(r, w) for r in idx if right[r] for w in idx if not right[w]]
    return pairs


def generate_choices(pipe, cfg: PickConfig, seed: int, log: Log) -> tuple[np.ndarray, list[str], list]:
    """Candidates of every training prompt (``cfg.candidates`` each, guidance scales in turn)
    and their (right, wrong) pairs."""
    images, prompts = [], []
    for k, guidance in enumerate(cfg.guidance):
        rep = [p for p in TRAIN_PROMPTS for _ in range(cfg.candidates // len(cfg.guidance))]
        seeds = [seed + k * 100_000 + i for i in range(len(rep))]
        images.append(generate(pipe, rep, seeds, guidance=guidance, batch=128))
        prompts += rep
    x = np.concatenate(images)
    pairs = choices(x, prompts)
    log(f"pick: {len(x)} candidates of {len(TRAIN_PROMPTS)} prompts, {len(pairs)} (right, wrong) pairs")
    return x, prompts, pairs


def train_pick(model, tokenizer, images: np.ndarray, prompts: list[str], pairs: list, cfg: PickConfig,
               log: Log, seed: int):  # fmt: skip
    """Fine-tune ``model`` (a transformers CLIPModel) on the (right, wrong) ``pairs``."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = (as_tensor(images) - mean) / std  # 32x32 already: the processor only normalises
    unique = list(dict.fromkeys(prompts))
    tokens = tokenizer(unique, padding=True, return_tensors="pt")
    prompt_row = torch.tensor([unique.index(p) for p in prompts])
    pair_array = np.asarray(pairs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    model.train()
    t0 = time.time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * cosine_lr(step, cfg.steps, 20)
        batch = pair_array[rng.integers(0, len(pair_array), cfg.pairs)]
        img = F.normalize(
            model.get_image_features(pixel_values=pixels[batch.reshape(-1)]).pooler_output, dim=-1
        )
        txt = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        txt = txt[prompt_row[batch[:, 0]]]
        s = model.logit_scale.exp() * (img.view(cfg.pairs, 2, -1) * txt[:, None]).sum(-1)  # (pairs, 2)
        loss = F.cross_entropy(s, torch.zeros(cfg.pairs, dtype=torch.long))  # the right one is chosen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            acc = (s[:, 0] > s[:, 1]).float().mean().item()
            log(f"pick step {step} loss {loss.item():.3f} pair-acc {acc:.3f} {time.time() - t0:.0f}s")
    return model.eval()


def save_pick(model, out: Path) -> None:
    """fp16 safetensors (``CLIPModel.save_pretrained``) beside the processor files."""
    model.half().save_pretrained(out, safe_serialization=True)
    model.float()


def all_texts() -> list[str]:
    """Every caption of the world (full and short): what the pruned vocabulary must keep."""
    return FULL_CAPTIONS + SHORT_CAPTIONS
