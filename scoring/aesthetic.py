"""LAION "improved aesthetic predictor": an MLP on CLIP image embeddings that predicts a 1-10
rating of how much people like an image.

The published head (``sac+logos+ava1-l14-linearMSE.pth``) is a plain PyTorch state dict with
keys ``layers.{0,2,4,6,7}.{weight,bias}``: Linear 768->1024, Dropout, Linear 1024->128, Dropout,
Linear 128->64, Dropout, Linear 64->16, Linear 16->1, no activations. It expects L2-normalised
image embeddings of OpenAI CLIP ViT-L/14 (open_clip ``ViT-L-14`` / ``openai``, or
``ViT-L-14-quickgelu`` with a local copy of those weights). Heads with the
same layout and other widths (the bundled ``shapes-aesthetic``) load the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from winnow.scoring.base import register
from winnow.scoring.head import FileRef, HeadParams, HeadScorer
from winnow.scoring.head_file import HeadCache, HeadFormatError, read_state_dict

_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


class AestheticHead(nn.Module):
    """Maps (n, d) L2-normalised CLIP image embeddings to (n,) aesthetic scores.

    ``layers`` is an ``nn.Sequential`` whose indices match the state-dict keys: a Linear where
    the file has ``layers.i.weight``, a Dropout in each gap (identity in eval mode, kept so the
    indices line up). Always returned in eval mode.
    """

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    @property
    def in_features(self) -> int:
        """Embedding width the head expects (768 for the published LAION head)."""
        return next(m for m in self.layers if isinstance(m, nn.Linear)).in_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(n, d) embeddings -> (n,) scores."""
        return self.layers(embeddings).squeeze(-1)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str = "state dict") -> AestheticHead:
        """Build the Sequential the keys describe and load ``state`` into it (strictly)."""
        linear: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            match = _KEY.match(key)
            if match is None or not isinstance(value, torch.Tensor):
                raise HeadFormatError(
                    f"{source}: unexpected entry {key!r}; expected LAION keys layers.N.weight/bias"
                )
            linear.setdefault(int(match[1]), {})[match[2]] = value
        if not linear or any(set(p) != {"weight", "bias"} for p in linear.values()):
            raise HeadFormatError(f"{source}: every layers.N needs both weight and bias")
        modules: list[nn.Module] = []
        width: int | None = None
        for index in range(max(linear) + 1):
            if index not in linear:
                modules.append(nn.Dropout(p=0.0))  # p is moot: the head is only used in eval
                continue
            weight, bias = linear[index]["weight"], linear[index]["bias"]
            if weight.ndim != 2 or bias.shape != weight.shape[:1]:
                raise HeadFormatError(f"{source}: layers.{index} is not a Linear layer")
            if width is not None and weight.shape[1] != width:
                raise HeadFormatError(
                    f"{source}: layers.{index} takes {weight.shape[1]} inputs but gets {width}"
                )
            width = weight.shape[0]
            modules.append(nn.Linear(weight.shape[1], weight.shape[0]))
        if width != 1 or isinstance(modules[-1], nn.Dropout):
            raise HeadFormatError(f"{source}: the last layer must be a Linear with one output")
        head = cls(nn.Sequential(*modules))
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return head.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> AestheticHead:
        """Load a head from ``.safetensors`` or a PyTorch state dict (``.pth``/``.pt``/``.bin``),
        safely (``winnow.scoring.head_file.read_state_dict``)."""
        state = read_state_dict(path, "aesthetic head")
        return cls.from_state_dict(state, source=f"aesthetic head {str(path)!r}")


HEADS = HeadCache("aesthetic head", AestheticHead.from_file)
load_head = HEADS.get  # the head for a reference on a device, loaded once per process


class AestheticParams(HeadParams):
    """The aesthetic scorer's settings."""

    head: FileRef = Field(
        description="the head's weights: a local .pth/.safetensors file, bundled:shapes-aesthetic, "
        "hf://org/name[@revision]/FILE, or https://.../FILE#sha256=HEX"
    )


@register
class AestheticScorer(HeadScorer):
    """LAION aesthetic score of each image, on the head's scale: roughly 1-10 for the published
    head (around 5 is average, above 6.5 is "good"), higher is better. The prompt is ignored."""

    name = "aesthetic"
    Params = AestheticParams
    params: AestheticParams
    heads = HEADS
