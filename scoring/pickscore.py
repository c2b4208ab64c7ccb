"""PickScore: a CLIP fine-tuned on human choices between two images of one prompt (Pick-a-Pic).

The published model (``yuvalkirstain/PickScore_v1``) is a transformers ``CLIPModel``, a
fine-tune of OpenCLIP ViT-H/14; its processor (image preprocessing and tokenizer) is that of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``. The score is the authors' own:
``logit_scale.exp() * cos(text, image)`` on L2-normalised features (about 18-23 for real
images and prompts with the published model; only differences between candidates of one
prompt mean anything).

Images are preprocessed as tensors on the device, batched, replicating ``CLIPImageProcessor``
(resize the short side with its resampling filter, clamp to the pixel range as PIL does,
center crop, normalise). Weights load from safetensors only, strictly: a checkpoint with
missing or unexpected keys is a one-line error, never a half-random model. On a GPU the model
runs in bfloat16; embeddings and scores are float32.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from winnow.models.errors import WinnowError, first_line
from winnow.models.sources import resolve
from winnow.scoring.base import Candidates, Scorer, ScorerParams, register
from winnow.scoring.clip import per_prompt

CHUNK = 64  # images/texts per forward pass: bounds activation memory for big N on a GPU
# PIL resampling codes (what CLIPImageProcessor's ``resample`` holds) -> F.interpolate modes.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class RewardModelError(WinnowError):
    """A reward model that exists but cannot be loaded as published (format, keys, processor)."""


class PickScoreParams(ScorerParams):
    """PickScore's settings."""

    model: str = Field(
        "yuvalkirstain/PickScore_v1",
        description="the transformers CLIPModel: a local folder (config.json + model.safetensors), "
        "a hub id org/name[@revision], or bundled:shapes-pick",
    )
    processor: str | None = Field(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        description="the CLIPProcessor folder or hub id (preprocessor_config.json + tokenizer); "
        "null: the model's own folder holds it (as bundled:shapes-pick does)",
    )


@dataclass(frozen=True, eq=False)
class LoadedReward:
    """A transformers CLIPModel in eval mode on ``device``, with what preprocessing needs.

    ``resize`` is the short side in pixels, ``crop`` (height, width); ``mean``/``std`` are
    (1, 3, 1, 1) float32 tensors on the device in [0, 1] pixel units.
    """

    model: Any  # transformers.CLIPModel
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    resize: int | None
    crop: tuple[int, int] | None
    interpolation: str
    mean: torch.Tensor
    std: torch.Tensor
    max_length: int


_CACHE: dict[tuple[str, str | None, str], LoadedReward] = {}
_LOCK = threading.Lock()


def load_pickscore(params: PickScoreParams, device: torch.device | str) -> LoadedReward:
    """The model and processor of ``params`` on ``device``, loaded once per process."""
    device = torch.device(device)
    key = (params.model, params.processor, str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(params, device)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget loaded models (tests; freeing GPU memory between runs)."""
    with _LOCK:
        _CACHE.clear()


def _load(params: PickScoreParams, device: torch.device) -> LoadedReward:
    import transformers
    from transformers import CLIPModel, CLIPProcessor

    transformers.utils.logging.disable_progress_bar()  # winnow shows its own progress
    folder = resolve(params.model, pipeline=False).path  # one-line ModelNotFoundError offline
    processor_folder = folder if params.processor is None else resolve(params.processor, pipeline=False).path
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise RewardModelError(
            f"PickScore model {params.model!r} has no .safetensors weights in {folder}; only "
            "safetensors checkpoints are loaded (convert a pytorch_model.bin with safetensors first)"
        )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        model, info = CLIPModel.from_pretrained(
            folder, use_safetensors=True, dtype=dtype, output_loading_info=True
        )
        processor = CLIPProcessor.from_pretrained(processor_folder)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
        raise RewardModelError(f"cannot load PickScore model {params.model!r}: {first_line(err)}") from None
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(kind) or ())
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            raise RewardModelError(
                f"PickScore model {params.model!r}: checkpoint is not a CLIPModel of its config "
                f"({kind.replace('_', ' ')}: {keys[0]!r}{more})"
            )
    images = processor.image_processor
    mean = torch.tensor(images.image_mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(images.image_std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    resample = int(getattr(images.resample, "value", images.resample))
    if resample not in _RESAMPLE:
        raise RewardModelError(f"PickScore processor: unsupported resampling filter {resample}")
    crop_size = (int(images.crop_size["height"]), int(images.crop_size["width"]))
    crop = crop_size if images.do_center_crop else None
    resize = int(images.size["shortest_edge"]) if images.do_resize else None
    return LoadedReward(
        model=model.to(device).eval(),
        tokenizer=processor.tokenizer,
        device=device,
        dtype=dtype,
        resize=resize,
        crop=crop,
        interpolation=_RESAMPLE[resample],
        mean=mean if images.do_normalize else torch.zeros_like(mean),
        std=std if images.do_normalize else torch.ones_like(std),
        max_length=int(model.config.text_config.max_position_embeddings),
    )


def preprocess(images: torch.Tensor, reward: LoadedReward) -> torch.Tensor:
    """(n, 3, H, W) images in [0, 1] -> normalised model input on the device, as
    ``CLIPImageProcessor`` makes it: short side to ``resize`` (long side truncated), center
    crop to ``crop``, normalise."""
    x = images.to(reward.device, torch.float32)
    h, w = x.shape[-2:]
    if reward.resize is not None and min(h, w) != reward.resize:
        short, long = min(h, w), max(h, w)
        new_long = int(reward.resize * long / short)
        size = (new_long, reward.resize) if h > w else (reward.resize, new_long)
        mode = reward.interpolation
        x = F.interpolate(x, size=size, mode=mode, antialias=mode != "nearest").clamp(0.0, 1.0)
    if reward.crop is not None:
        th, tw = reward.crop
        h, w = x.shape[-2:]
        if th > h or tw > w:
            raise RewardModelError(f"PickScore processor: {h}x{w} images are smaller than the {th}x{tw} crop")
        top, left = (h - th) // 2, (w - tw) // 2  # CLIPImageProcessor's center_crop offsets
        x = x[..., top : top + th, left : left + tw]
    return ((x - reward.mean) / reward.std).to(reward.dtype)


def encode_images(images: torch.Tensor, reward: LoadedReward) -> torch.Tensor:
    """(n, 3, H, W) images in [0, 1] -> (n, d) float32 L2-normalised image features."""
    out = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], CHUNK):
            x = preprocess(images[start : start + CHUNK], reward)
            out.append(_features(reward.model.get_image_features(pixel_values=x)))
    if not out:
        return torch.zeros(0, reward.model.config.projection_dim, device=reward.device)
    return F.normalize(torch.cat(out), dim=-1)


def encode_texts(texts: list[str], reward: LoadedReward) -> torch.Tensor:
    """Texts -> (n, d) float32 L2-normalised text features (truncated to the context length,
    as PickScore's reference code does)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), CHUNK):
            tokens = reward.tokenizer(
                texts[start : start + CHUNK],
                padding=True,
                truncation=True,
                max_length=reward.max_length,
                return_tensors="pt",
            ).to(reward.device)
            out.append(_features(reward.model.get_text_features(**tokens)))
    if not out:
        return torch.zeros(0, reward.model.config.projection_dim, device=reward.device)
    return F.normalize(torch.cat(out), dim=-1)


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projected feature;
    older versions returned the tensor itself."""
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    return tensor.float()


@register
class PickScoreScorer(Scorer):
    """``logit_scale.exp() * cos(text, image)`` of the PickScore model, higher is better.

    Each distinct prompt of a batch is encoded once. The image features are memoised per batch
    by the model reference (another scorer of the same model reuses them; they are not the
    open_clip embeddings ``clip_score`` and ``aesthetic`` share).
    """

    name = "pickscore"
    Params = PickScoreParams
    params: PickScoreParams

    def setup(self) -> None:
        """Load the model and processor once per process."""
        load_pickscore(self.params, self.device)

    def score(self, batch: Candidates) -> torch.Tensor:
        """(n,) float32 CPU scores (the model's logit scale times the cosine)."""
        reward = load_pickscore(self.params, self.device)
        key = ("pickscore_image", self.params.model, self.params.processor)
        images = batch.memo(key, lambda: encode_images(batch.images, reward))
        texts = per_prompt(batch.prompts, lambda unique: encode_texts(unique, reward))
        scale = reward.model.logit_scale.detach().float().exp()
        return (scale * (images * texts).sum(dim=-1)).float().cpu()
