"""ImageReward: a BLIP (ViT-L/16 image encoder, BERT-base text encoder with cross-attention to
the image) plus an MLP head, trained on expert rankings of generated images.

An optional extra: the model class comes from the ``image-reward`` package, whose pins
(``timm==0.6.13``, ``fairscale``) would constrain the core install, so it is never a
dependency of winnow; install it where it fits (``pip install 'winnow[imagereward]'``, in an
environment of its own if its pins clash). This module imports without it; using the scorer
without it is a one-line error with that hint.

winnow loads the published ``ImageReward.pt`` itself (``torch.load(weights_only=True)``, a
strict key and shape check: a missing or unexpected key is a one-line error naming it), never
through the package's ``load``, which unpickles without restriction and downloads. BLIP's
tokenizer is ``bert-base-uncased`` from the Hugging Face cache (the package fetches it when
the model is built; offline it must be cached). The score is the published normalisation of
the head's output, ``(raw - 0.16717) / 1.03334`` (about -2 to 2, 0 = the average of the
training set). Images are preprocessed as tensors on the device as the package's transform
does (bicubic resize of the short side to 224, center crop, CLIP mean/std); in bfloat16 on a
GPU.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, Field

from winnow.models.errors import WinnowError, first_line
from winnow.models.sources import check_file_ref, resolve_file
from winnow.scoring.base import Candidates, Scorer, ScorerParams, register
from winnow.scoring.head_file import read_state_dict
from winnow.scoring.hpsv2 import CheckpointFormatError, check_keys

CHUNK = 32  # images per forward pass (BLIP keeps 577 x 1024 image tokens per image)
SIZE = 224
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TEXT_TOKENS = 35  # the package's max_length for prompts
INSTALL_HINT = (
    "pip install 'winnow[imagereward]' (image-reward 1.5; its pins may need an environment of its own)"
)


class ExtraMissingError(WinnowError):
    """A scorer whose optional package is not installed."""


class ImageRewardParams(ScorerParams):
    """ImageReward's settings."""

    checkpoint: Annotated[str, AfterValidator(check_file_ref)] = Field(
        "hf://THUDM/ImageReward/ImageReward.pt",
        description="ImageReward.pt (a state dict): a local file, hf://org/name[@revision]/FILE, or "
        "https://.../FILE#sha256=HEX",
    )
    med_config: Annotated[str, AfterValidator(check_file_ref)] = Field(
        "hf://THUDM/ImageReward/med_config.json",
        description="BLIP's text-encoder config med_config.json, named like checkpoint",
    )


def model_class() -> type:
    """The ``ImageReward`` nn.Module class of the ``image-reward`` package."""
    try:
        module = importlib.import_module("ImageReward.ImageReward")
    except ImportError as err:
        raise ExtraMissingError(
            f"the imagereward scorer needs the image-reward package ({first_line(err)}): {INSTALL_HINT}"
        ) from None
    return module.ImageReward


_CACHE: dict[tuple[Path, Path, str], Any] = {}
_LOCK = threading.Lock()


def load_imagereward(params: ImageRewardParams, device: torch.device | str) -> Any:
    """The ImageReward model of ``params`` in eval mode on ``device``, once per process."""
    device = torch.device(device)
    cls = model_class()
    checkpoint = resolve_file(params.checkpoint, "ImageReward checkpoint").path.resolve()
    med_config = resolve_file(params.med_config, "ImageReward med_config").path.resolve()
    key = (checkpoint, med_config, str(device))
    with _LOCK:
        if key not in _CACHE:
            state = read_state_dict(checkpoint, "ImageReward checkpoint", CheckpointFormatError, "state_dict")
            try:
                model = cls(med_config=str(med_config), device=str(device))
            except Exception as err:  # BLIP's tokenizer not cached offline, a bad med_config...
                raise WinnowError(f"cannot build the ImageReward model: {first_line(err)}") from None
            check_keys(model, state, f"ImageReward checkpoint {str(checkpoint)!r}")
            model.load_state_dict(state, strict=True)
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            _CACHE[key] = model.to(device, dtype).eval()
        return _CACHE[key]


def clear_cache() -> None:
    """Forget loaded models (tests; freeing GPU memory between runs)."""
    with _LOCK:
        _CACHE.clear()


def preprocess(images: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, 3, H, W) in [0, 1] -> (n, 3, 224, 224) normalised, as the package's transform:
    Resize(224, bicubic), CenterCrop(224), Normalize(CLIP mean/std)."""
    import torchvision.transforms.v2.functional as TF

    x = images.to(device, torch.float32)
    x = TF.resize(x, [SIZE], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0.0, 1.0)
    return TF.normalize(TF.center_crop(x, [SIZE, SIZE]), list(MEAN), list(STD)).to(dtype)


@register
class ImageRewardScorer(Scorer):
    """ImageReward's normalised reward, about -2 to 2, higher is better.

    The BLIP image tokens are memoised per batch by checkpoint; each candidate's prompt then
    attends to its image through the text encoder (the prompt and image meet inside the model,
    so this costs one text-encoder pass per candidate, not per prompt).
    """

    name = "imagereward"
    Params = ImageRewardParams
    params: ImageRewardParams

    def setup(self) -> None:
        """Load the model once per process (or fail in one line without the extra)."""
        load_imagereward(self.params, self.device)

    def score(self, batch: Candidates) -> torch.Tensor:
        """(n,) float32 CPU rewards, normalised as published."""
        model = load_imagereward(self.params, self.device)
        dtype = next(model.parameters()).dtype
        key = ("imagereward_image", self.params.checkpoint)

        def image_tokens() -> list[torch.Tensor]:
            with torch.inference_mode():
                return [
                    model.blip.visual_encoder(preprocess(batch.images[i : i + CHUNK], self.device, dtype))
                    for i in range(0, batch.images.shape[0], CHUNK)
                ]

        chunks = batch.memo(key, image_tokens)
        out = []
        with torch.inference_mode():
            for start, embeds in zip(range(0, len(batch.prompts), CHUNK), chunks, strict=True):
                text = model.blip.tokenizer(
                    batch.prompts[start : start + CHUNK],
                    padding="max_length",
                    truncation=True,
                    max_length=TEXT_TOKENS,
                    return_tensors="pt",
                ).to(self.device)
                image_atts = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)
                output = model.blip.text_encoder(
                    text.input_ids,
                    attention_mask=text.attention_mask,
                    encoder_hidden_states=embeds,
                    encoder_attention_mask=image_atts,
                    return_dict=True,
                )
                raw = model.mlp(output.last_hidden_state[:, 0, :]).float().squeeze(-1)
                out.append((raw - model.mean) / model.std)
        if not out:
            return torch.zeros(0)
        return torch.cat(out).float().cpu()
