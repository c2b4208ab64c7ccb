"""HPS v2.1 (Human Preference Score): an OpenCLIP ViT-H/14 fine-tuned on human rankings of
generated images (HPDv2).

The published checkpoint (``HPS_v2.1_compressed.pt`` in the ``xswu/HPSv2`` hub repo) is a
pickle holding ``{"state_dict": {...}}`` with open_clip's ``CLIP`` key names. winnow builds
the architecture with open_clip (``pretrained=None``) and loads that state dict itself, with
``torch.load(weights_only=True)`` and a strict key check (a missing or unexpected key is a
one-line error naming it, before any weight is copied); the ``hpsv2`` package's own loader
is never used (it downloads, and pins ``protobuf<4`` and ``pytest==7.2.0``).

The score is the authors' (``img_score.py``): ``cos(text, image)`` of the L2-normalised
features, about 0.2-0.35 for real images with the published weights. Preprocessing is the
HPS evaluation transform, done as tensors on the device: resize the longest side to the
model's size, pad to a square with black, normalise with the model's mean/std. On a GPU the
model runs in bfloat16 (the authors use automatic mixed precision); features are float32.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field, field_validator

from winnow.models.errors import ModelNotFoundError, WinnowError
from winnow.models.sources import check_file_ref, resolve_file
from winnow.scoring import head_file
from winnow.scoring.base import Candidates, Scorer, ScorerParams, register
from winnow.scoring.clip import CHUNK, ClipSpec, LoadedClip, builtin_architectures, per_prompt, preprocess

PUBLISHED = "hf://xswu/HPSv2/HPS_v2.1_compressed.pt"


class CheckpointFormatError(WinnowError):
    """A checkpoint that is not a safe, complete state dict of its architecture."""


class HpsV2Params(ScorerParams):
    """HPS v2.1's settings."""

    model: str = Field(
        "ViT-H-14",
        description="the open_clip architecture of the checkpoint: ViT-H-14 for HPS v2.1, or a "
        "model-config .json path",
    )
    checkpoint: Annotated[str, AfterValidator(check_file_ref)] = Field(
        PUBLISHED,
        description="the HPS checkpoint ({state_dict: ...} .pt, or a .safetensors state dict): a "
        "local file, hf://org/name[@revision]/FILE, or https://.../FILE#sha256=HEX",
    )

    @field_validator("model")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        if not value.endswith(".json") and value not in builtin_architectures():
            raise ValueError(f"unknown open_clip architecture {value!r} (HPS v2.1 is ViT-H-14)")
        return value


class _Without(logging.Filter):
    """Drops log records containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


_CACHE: dict[tuple[str, Path, str], LoadedClip] = {}
_LOCK = threading.Lock()


def load_hpsv2(params: HpsV2Params, device: torch.device | str) -> LoadedClip:
    """The HPS model of ``params`` on ``device`` (with its preprocessing), loaded once per
    process. Raises ``ModelNotFoundError`` or ``CheckpointFormatError``, one line each."""
    device = torch.device(device)
    path = resolve_file(params.checkpoint, "HPS checkpoint").path.resolve()
    key = (params.model, path, str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(params.model, path, device)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget loaded models (tests; freeing GPU memory between runs)."""
    with _LOCK:
        _CACHE.clear()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a ``.safetensors`` file, or a pickle read with
    ``weights_only=True`` holding ``{"state_dict": {...}}`` (HPS's layout) or the dict itself."""
    return head_file.read_state_dict(path, "HPS checkpoint", CheckpointFormatError, nested="state_dict")


def check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line ``CheckpointFormatError`` naming the first missing, unexpected or
    mis-shaped key of ``state`` for ``model`` (nothing is loaded when it raises)."""
    want = {k: v.shape for k, v in model.state_dict().items()}
    problems = (
        ("missing key", sorted(want.keys() - state.keys())),
        ("unexpected key", sorted(state.keys() - want.keys())),
        ("wrong shape for", sorted(k for k in want.keys() & state.keys() if state[k].shape != want[k])),
    )
    for what, keys in problems:
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CheckpointFormatError(f"{source} does not fit its architecture: {what} {keys[0]!r}{more}")


def _load(name: str, path: Path, device: torch.device) -> LoadedClip:
    import open_clip

    arch = name
    if name.endswith(".json"):
        config = Path(name).expanduser()
        if not config.is_file():
            raise ModelNotFoundError(f"open_clip model config {name!r} does not exist")
        open_clip.add_model_config(config)
        arch = config.stem
    source = f"HPS checkpoint {str(path)!r}"
    state = read_state_dict(path)
    quiet = _Without("initialized randomly")  # open_clip warns; the weights come next
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(arch, pretrained=None)
    finally:
        logging.getLogger().removeFilter(quiet)
    check_keys(model, state, source)
    model.load_state_dict(state, strict=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(device, dtype).eval()
    pp = dict(model.visual.preprocess_cfg)
    size = pp["size"]
    return LoadedClip(
        spec=ClipSpec(model=name, pretrained=str(path)),
        model=model,
        tokenizer=open_clip.get_tokenizer(arch),
        device=device,
        image_size=(size, size) if isinstance(size, int) else (int(size[0]), int(size[1])),
        mean=torch.tensor(pp["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1),
        std=torch.tensor(pp["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1),
        interpolation=str(pp.get("interpolation", "bicubic")),
        resize_mode="longest",  # HPS's ResizeMaxSize: longest side to the size, pad with black
        fill=0.0,
        embed_dim=int(model.text_projection.shape[-1]),
    )


def encode_images(images: torch.Tensor, hps: LoadedClip) -> torch.Tensor:
    """(n, 3, H, W) images in [0, 1] -> (n, d) float32 L2-normalised image features."""
    dtype = next(hps.model.parameters()).dtype
    out = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], CHUNK):
            x = preprocess(images[start : start + CHUNK], hps).to(dtype)
            out.append(hps.model.encode_image(x).float())
    if not out:
        return torch.zeros(0, hps.embed_dim, device=hps.device)
    return F.normalize(torch.cat(out), dim=-1)


def encode_texts(texts: list[str], hps: LoadedClip) -> torch.Tensor:
    """Texts -> (n, d) float32 L2-normalised text features (truncated to 77 tokens)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), CHUNK):
            tokens = hps.tokenizer(texts[start : start + CHUNK]).to(hps.device)
            out.append(hps.model.encode_text(tokens).float())
    if not out:
        return torch.zeros(0, hps.embed_dim, device=hps.device)
    return F.normalize(torch.cat(out), dim=-1)


@register
class HpsV2Scorer(Scorer):
    """HPS v2.1: ``cos(text, image)`` of the HPS model, about 0.2-0.35, higher is better.

    Each distinct prompt of a batch is encoded once; the image features are memoised per batch
    by architecture and checkpoint (not shared with ``clip_score``/``aesthetic``'s CLIP).
    """

    name = "hpsv2"
    Params = HpsV2Params
    params: HpsV2Params

    def setup(self) -> None:
        """Load the model once per process."""
        load_hpsv2(self.params, self.device)

    def score(self, batch: Candidates) -> torch.Tensor:
        """(n,) float32 CPU scores in [-1, 1]."""
        hps = load_hpsv2(self.params, self.device)
        key = ("hpsv2_image", self.params.model, self.params.checkpoint)
        images = batch.memo(key, lambda: encode_images(batch.images, hps))
        texts = per_prompt(batch.prompts, lambda unique: encode_texts(unique, hps))
        return (images * texts).sum(dim=-1).clamp(-1.0, 1.0).float().cpu()
