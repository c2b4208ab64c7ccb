"""LAION's CLIP-based NSFW detector: a small MLP on CLIP image embeddings that gives the
probability that an image is NSFW.

The published head (``clip_ViT-L-14_openai_binary_nsfw_head.pth``, from
github.com/LAION-AI/CLIP-based-NSFW-Detector, MIT) is a plain PyTorch state dict with keys
``norm.mean`` and ``norm.variance`` [768] (a Keras normalisation layer's statistics) and
``linear_1`` .. ``linear_4`` (768->64->512->256->1). Its computation: ``x = (e - mean) /
sqrt(variance)``, Linear, ReLU, Linear, ReLU, Linear, ReLU, Linear, Sigmoid. It expects
L2-normalised image embeddings of OpenAI CLIP ViT-L/14 (open_clip ``ViT-L-14`` / ``openai``,
or ``ViT-L-14-quickgelu`` with a local copy of those weights), the embedding the aesthetic
head uses, so both heads share one CLIP pass per batch. Heads with the same layout and other
widths load the same way.

The score is a probability in [0, 1] where **higher is worse** (1 = NSFW): use it as a
ceiling (``select.ceilings: {nsfw: 0.5}`` rejects ``above_ceiling:nsfw``). It has no ranking
weight unless ``select.weights`` gives it one (a negative one prefers safer images).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from winnow.scoring.base import register
from winnow.scoring.head import FileRef, HeadParams, HeadScorer
from winnow.scoring.head_file import HeadCache, HeadFormatError, read_state_dict

LINEARS = ("linear_1", "linear_2", "linear_3", "linear_4")
KEYS = frozenset({"norm.mean", "norm.variance"} | {f"{n}.{p}" for n in LINEARS for p in ("weight", "bias")})


class Standardize(nn.Module):
    """``(x - mean) / sqrt(variance)`` per feature: the Keras normalisation layer the head was
    converted from (its statistics are fixed buffers, never trained here)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.variance.sqrt()


class NSFWHead(nn.Module):
    """Maps (n, d) L2-normalised CLIP image embeddings to (n,) NSFW probabilities in [0, 1].

    ``widths`` are the four Linear layers' input widths (768, 64, 512, 256 for the published
    head); the last layer has one output. Always returned in eval mode by the constructors.
    """

    def __init__(self, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.norm = Standardize(widths[0])
        for name, fan_in, fan_out in zip(LINEARS, widths, (*widths[1:], 1), strict=True):
            self.add_module(name, nn.Linear(fan_in, fan_out))

    @property
    def in_features(self) -> int:
        """Embedding width the head expects (768 for the published head)."""
        return self.linear_1.in_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(n, d) embeddings -> (n,) probabilities, 1 = NSFW."""
        x = self.norm(embeddings)
        for name in LINEARS[:-1]:
            x = torch.relu(getattr(self, name)(x))
        return torch.sigmoid(self.linear_4(x)).squeeze(-1)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str = "state dict") -> NSFWHead:
        """The head ``state`` describes (keys exactly as in the published file), loaded strictly."""
        missing, extra = sorted(KEYS - state.keys()), sorted(state.keys() - KEYS)
        if missing or extra:
            listed = (("missing", missing), ("unexpected", extra))
            found = "; ".join(f"{label} {', '.join(keys)}" for label, keys in listed if keys)
            raise HeadFormatError(f"{source}: not the LAION NSFW head layout ({found})")
        widths: list[int] = []
        previous: int | None = None  # the last layer's output width
        for name in LINEARS:
            weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
            if weight.ndim != 2 or bias.shape != weight.shape[:1]:
                raise HeadFormatError(f"{source}: {name} is not a Linear layer")
            if previous is not None and weight.shape[1] != previous:
                raise HeadFormatError(f"{source}: {name} takes {weight.shape[1]} inputs but gets {previous}")
            widths.append(weight.shape[1])
            previous = weight.shape[0]
        if previous != 1:
            raise HeadFormatError(f"{source}: linear_4 must have one output, not {previous}")
        for stat in ("mean", "variance"):
            if state[f"norm.{stat}"].shape != (widths[0],):
                raise HeadFormatError(f"{source}: norm.{stat} must have {widths[0]} values")
        if not bool((state["norm.variance"] > 0).all()):
            raise HeadFormatError(f"{source}: norm.variance must be positive")
        head = cls(tuple(widths))
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return head.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> NSFWHead:
        """Load a head from ``.safetensors`` or a PyTorch state dict (``.pth``/``.pt``/``.bin``),
        safely (``winnow.scoring.head_file.read_state_dict``)."""
        what = f"nsfw head {str(path)!r}"
        return cls.from_state_dict(read_state_dict(path, "nsfw head"), source=what)


HEADS = HeadCache("nsfw head", NSFWHead.from_file)


class NSFWParams(HeadParams):
    """The nsfw scorer's settings."""

    head: FileRef = Field(
        description="the head's weights: a local .pth/.safetensors file, hf://org/name[@revision]/FILE, "
        "or https://.../FILE#sha256=HEX (LAION's clip_ViT-L-14_openai_binary_nsfw_head.pth)"
    )


@register
class NSFWScorer(HeadScorer):
    """LAION's NSFW detector: the probability that an image is NSFW, in [0, 1], higher is worse.
    Gate with a ceiling (`select.ceilings: {nsfw: 0.5}`); it ranks nothing unless `select.weights`
    gives it a weight. The prompt is ignored."""

    name = "nsfw"
    Params = NSFWParams
    default_weight = 0.0  # higher is worse: a ceiling gates on it, it ranks nothing unless weighted
    params: NSFWParams
    heads = HEADS
