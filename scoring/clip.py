"""open_clip models for scoring: which CLIP (``ClipSpec``), loading it once per process, and
batched, memoised image/text embeddings that several scorers share.

A ``ClipSpec`` names an architecture and its weights:

- ``model``: an open_clip architecture name (``ViT-L-14``), a path to an open_clip
  model-config JSON (``{"embed_dim", "vision_cfg", "text_cfg"}``; its file stem becomes the
  architecture name), ``hf-hub:org/name`` / ``local-dir:/path`` (open_clip's own schemas,
  config and weights together), or ``bundled:shapes-clip`` (the tiny CLIP shipped in this
  repository: ``<folder>/shapes-clip.json`` + ``<folder>/shapes-clip.safetensors``).
- ``pretrained``: an open_clip pretrained tag (``openai``), a local checkpoint
  (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``torch.load(weights_only=True)``),
  or ``hf-hub:org/name`` (weights only, from an open_clip hub repo). Required unless ``model``
  already brings weights (``bundled:``, ``hf-hub:``, ``local-dir:``): a randomly initialised
  CLIP would produce scores that look valid and mean nothing.

OpenAI's weights were trained with QuickGELU. With the ``openai`` tag this module turns it on
(open_clip itself only warns); with OpenAI weights from a local file, name the ``-quickgelu``
architecture (``ViT-L-14-quickgelu``), or the embeddings come out subtly wrong.

A config declares each CLIP once, by name, in its top-level ``clip`` section; a scorer's
``clip`` setting (a ``ClipRef``) is such a name, or an inline spec. Scorers that name the same
CLIP (or give equal inline specs) share one loaded model and one image embedding per batch.

Embeddings are float32, L2-normalised, on the scoring device. Images are preprocessed as
tensors on the device, batched, replicating open_clip's inference transform (resize with the
model's interpolation and resize mode, center crop, normalise with the model's mean/std).

``open_clip`` is imported lazily: it costs seconds to import and most commands never score.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from winnow.models.errors import ModelNotFoundError, WinnowError, first_line
from winnow.models.sources import resolve
from winnow.scoring.base import Candidates

if TYPE_CHECKING:
    from collections.abc import Callable

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
SCHEMAS = ("hf-hub:", "local-dir:")
CHUNK = 64  # images/texts per forward pass: bounds activation memory for big N on a GPU

_INTERPOLATION = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


class ClipLoadError(WinnowError):
    """A CLIP that exists but cannot be built (bad config, checkpoint/architecture mismatch)."""


@cache
def builtin_architectures() -> frozenset[str]:
    """open_clip's built-in architecture names, read from its config folder without importing
    the package (importing open_clip takes seconds; config validation should not)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return frozenset(p.stem for p in folder.glob("*.json"))


def _looks_like_path(value: str) -> bool:
    return value.endswith((*CHECKPOINT_SUFFIXES, ".json")) or value.startswith(("/", ".", "~"))


class ClipSpec(BaseModel):
    """Which CLIP to use: an architecture (``model``) and its weights (``pretrained``).

    The module docstring lists the forms each one takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        description="open_clip architecture (ViT-L-14), a model-config .json path, hf-hub:org/name, "
        "local-dir:/path, or bundled:shapes-clip"
    )
    pretrained: str | None = Field(
        None,
        description="weights: an open_clip tag (openai), a local .safetensors/.pt/.bin checkpoint, or "
        "hf-hub:org/name; required unless model brings its own (bundled:, hf-hub:, local-dir:)",
    )

    @field_validator("model")
    @classmethod
    def _openai_spelling(cls, value: str) -> str:
        # open_clip accepts OpenAI's "ViT-L/14" for "ViT-L-14"; so do we (paths keep slashes).
        if value.startswith(("bundled:", *SCHEMAS)) or _looks_like_path(value):
            return value
        return value.replace("/", "-")

    @model_validator(mode="after")
    def _check(self) -> ClipSpec:
        m, p = self.model, self.pretrained
        if m.startswith(SCHEMAS):
            if p is not None:
                raise ValueError(f"pretrained must be empty when model is {m!r} (it has weights)")
        elif m.startswith("bundled:") or m.endswith(".json"):
            pass  # existence is checked at load time, on the machine that loads it
        elif m not in builtin_architectures():
            raise ValueError(
                f"unknown open_clip architecture {m!r}: use a name from open_clip.list_models() "
                "(e.g. ViT-L-14, ViT-B-32), a model-config .json path, or bundled:shapes-clip"
            )
        if p is None and not m.startswith(("bundled:", *SCHEMAS)):
            raise ValueError(
                f"pretrained is required for CLIP {m!r} (a tag like 'openai', a local checkpoint "
                "path, or hf-hub:org/name); random weights would give meaningless scores"
            )
        return self


NAMED = "clip"  # the validation-context key of the config's named specs (name -> ClipSpec)


def _named(value: Any, info: ValidationInfo) -> Any:
    """A CLIP name -> the spec of that name from the validation context; others unchanged."""
    if not isinstance(value, str):
        return value
    named = (info.context or {}).get(NAMED) or {}
    if value not in named:
        known = ", ".join(sorted(named)) or "none"
        raise ValueError(f"CLIP {value!r} is not named in the top-level clip section (named: {known})")
    return named[value]


ClipRef = Annotated[ClipSpec, BeforeValidator(_named)]
"""A scorer's CLIP setting: a name from the config's top-level ``clip`` section (validated with
``context={NAMED: {name: ClipSpec}}``), or an inline ``{model, pretrained}``."""


@dataclass(frozen=True, eq=False)
class LoadedClip:
    """A CLIP in eval mode on ``device`` plus what preprocessing needs.

    ``image_size`` is (height, width) in pixels; ``mean``/``std`` are (1, 3, 1, 1) tensors on the
    device, in [0, 1] pixel units; ``embed_dim`` is the embedding width.
    """

    spec: ClipSpec
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    image_size: tuple[int, int]
    mean: torch.Tensor
    std: torch.Tensor
    interpolation: str
    resize_mode: str
    fill: float
    embed_dim: int


# One copy of each model per process: Prefect thread tasks share the process, so loading is
# guarded by one lock (it also serialises open_clip's global config registry).
_CACHE: dict[tuple[ClipSpec, str], LoadedClip] = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget loaded models (tests; freeing GPU memory between runs)."""
    with _LOCK:
        _CACHE.clear()


def load_clip(spec: ClipSpec, device: torch.device | str) -> LoadedClip:
    """Return the model for ``spec`` on ``device``, loading it on first use in this process.

    Raises ``ModelNotFoundError`` (weights neither local nor downloadable) or ``ClipLoadError``
    (weights found but unusable), each with a one-line message.
    """
    device = torch.device(device)
    key = (spec, str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(spec, device)
        return _CACHE[key]


def _register_config(path: Path) -> str:
    """Register an open_clip model-config JSON; return its architecture name (the file stem)."""
    import open_clip

    if not path.is_file():
        raise ModelNotFoundError(f"open_clip model config {str(path)!r} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ClipLoadError(f"open_clip model config {str(path)!r} is unreadable: {err}") from None
    if not (isinstance(cfg, dict) and {"embed_dim", "vision_cfg", "text_cfg"} <= cfg.keys()):
        raise ClipLoadError(
            f"{str(path)!r} is not an open_clip model config (needs embed_dim, vision_cfg, "
            "text_cfg at the top level)"
        )
    # Re-registering on every load (under _LOCK) makes this file win over an earlier file with
    # the same stem, so the model built next is the one this spec names.
    open_clip.add_model_config(path)
    return path.stem


def _checkpoint_path(value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"CLIP checkpoint {value!r} does not exist; give the path of a local "
            f"{'/'.join(CHECKPOINT_SUFFIXES)} file, a pretrained tag, or hf-hub:org/name"
        )
    return str(path)


def _hub_weights(ref: str) -> str:
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        return download_pretrained_from_hf(ref.removeprefix("hf-hub:"))
    except Exception as err:  # offline, cache miss, 404, gated repo...
        raise ModelNotFoundError(
            f"CLIP weights {ref!r} are not on this machine and the hub is unreachable "
            f"({type(err).__name__}); give a local checkpoint path as clip.pretrained, or "
            f"pre-download them where the hub is reachable: `hf download {ref[7:]}`"
        ) from None


def _load(spec: ClipSpec, device: torch.device) -> LoadedClip:
    import open_clip

    name, pretrained = spec.model, spec.pretrained
    kwargs: dict[str, Any] = {}
    if name.startswith("bundled:"):
        folder = resolve(name).path  # ModelNotFoundError if unknown or missing
        stem = name.removeprefix("bundled:")
        name = _register_config(folder / f"{stem}.json")
        if pretrained is None:
            pretrained = str(folder / f"{stem}.safetensors")
    elif name.endswith(".json"):
        name = _register_config(Path(name).expanduser())

    if pretrained is None:
        pass  # hf-hub: / local-dir: models carry their own weights
    elif pretrained.startswith("hf-hub:"):
        pretrained = _hub_weights(pretrained)
    elif _looks_like_path(pretrained) or Path(pretrained).expanduser().is_file():
        pretrained = _checkpoint_path(pretrained)
    else:
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not tag_cfg:
            known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise ModelNotFoundError(
                f"unknown pretrained tag {pretrained!r} for CLIP {name!r} (known tags: {known}); "
                "or give a local checkpoint path"
            )
        # open_clip only *warns* when a tag was trained with QuickGELU (all OpenAI weights) and
        # the architecture config lacks it; the model would then silently compute different
        # embeddings (and the LAION aesthetic head expects OpenAI ViT-L/14's). Force it instead.
        model_cfg = open_clip.get_model_config(name) or {}
        if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
            kwargs["force_quick_gelu"] = True

    what = f"{spec.model!r}" + (f" with weights {spec.pretrained!r}" if spec.pretrained else "")
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained,
            device=device,
            weights_only=True,  # never unpickle arbitrary objects from a checkpoint
            require_pretrained=True,
            **kwargs,
        )
        tokenizer = open_clip.get_tokenizer(name)
    except RuntimeError as err:
        if "download" in str(err).lower() or "hub" in str(err).lower():
            args = repr(spec.model) + (f", pretrained={spec.pretrained!r}" if spec.pretrained else "")
            raise ModelNotFoundError(
                f"CLIP {what} is not on this machine and the hub is unreachable; give a local "
                "checkpoint path as clip.pretrained (.safetensors/.pt/.bin), or pre-download it "
                f'where the hub is reachable: `python -c "import open_clip; '
                f'open_clip.create_model({args})"`'
            ) from None
        raise ClipLoadError(f"cannot load CLIP {what}: {first_line(err, limit=300)}") from None
    except Exception as err:  # bad checkpoint file, architecture mismatch, unpickling refused...
        raise ClipLoadError(f"cannot load CLIP {what}: {first_line(err, limit=300)}") from None
    model.eval()

    pp = dict(model.visual.preprocess_cfg)
    size = pp["size"]
    image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    interpolation = str(pp.get("interpolation", "bicubic"))
    resize_mode = str(pp.get("resize_mode", "shortest"))
    if interpolation not in _INTERPOLATION or resize_mode not in ("shortest", "longest", "squash"):
        raise ClipLoadError(f"CLIP {what}: unsupported preprocessing ({interpolation=}, {resize_mode=})")
    embed_dim = _embed_dim(model, image_size, device)
    return LoadedClip(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        device=device,
        image_size=image_size,
        mean=torch.tensor(pp["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1),
        std=torch.tensor(pp["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1),
        interpolation=interpolation,
        resize_mode=resize_mode,
        fill=float(pp.get("fill_color", 0)) / 255.0,  # open_clip's fill is in 0-255 pixel units
        embed_dim=embed_dim,
    )


def _embed_dim(model: torch.nn.Module, image_size: tuple[int, int], device: torch.device) -> int:
    """Embedding width, read from the projection when possible (no forward pass)."""
    proj = getattr(model.visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    embed = getattr(model, "embed_dim", None)
    if isinstance(embed, int):
        return embed
    with torch.inference_mode():
        return int(model.encode_image(torch.zeros(1, 3, *image_size, device=device)).shape[-1])


def preprocess(images: torch.Tensor, clip: LoadedClip) -> torch.Tensor:
    """(n, 3, H, W) images in [0, 1] -> (n, 3, h, w) normalised model input on the device.

    Tensor version of open_clip's inference transform: resize (shortest side to the model size
    by default; ``longest`` pads, ``squash`` ignores aspect), center crop, then normalise.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (n, 3, H, W), got {tuple(images.shape)}")
    x = images.to(clip.device, torch.float32)
    h, w = x.shape[-2:]
    th, tw = clip.image_size
    if clip.resize_mode == "squash":
        size = (th, tw)
    elif clip.resize_mode == "shortest" and th == tw:
        # torchvision's Resize(int): the short side becomes th, the long side is truncated.
        short, long = min(h, w), max(h, w)
        new_short, new_long = th, int(th * long / short)
        size = (new_long, new_short) if h > w else (new_short, new_long)
    else:  # open_clip's ResizeKeepRatio (non-square "shortest", or "longest")
        ratio = min(h / th, w / tw) if clip.resize_mode == "shortest" else max(h / th, w / tw)
        size = (round(h / ratio), round(w / ratio))
    if size != (h, w):
        mode = _INTERPOLATION[clip.interpolation]
        x = F.interpolate(x, size=size, mode=mode, antialias=mode != "nearest")
        # Bicubic overshoots; PIL (which the models were trained behind) clamps to the pixel
        # range, so we do too.
        x = x.clamp(0.0, 1.0)
    x = _center_crop_or_pad(x, th, tw, clip.fill)
    return (x - clip.mean) / clip.std


def _center_crop_or_pad(x: torch.Tensor, th: int, tw: int, fill: float) -> torch.Tensor:
    """torchvision's center_crop offsets (round half to even), padding first if too small."""
    h, w = x.shape[-2:]
    if th > h or tw > w:
        pad_w, pad_h = max(tw - w, 0), max(th - h, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=fill)
        h, w = x.shape[-2:]
    top, left = round((h - th) / 2.0), round((w - tw) / 2.0)
    return x[..., top : top + th, left : left + tw]


def encode_images(images: torch.Tensor, spec: ClipSpec, device: torch.device | str) -> torch.Tensor:
    """(n, 3, H, W) images in [0, 1] -> (n, d) float32 L2-normalised embeddings on ``device``."""
    clip = load_clip(spec, device)
    out = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], CHUNK):
            x = preprocess(images[start : start + CHUNK], clip)
            out.append(clip.model.encode_image(x).float())
    if not out:
        return torch.zeros(0, clip.embed_dim, device=clip.device)
    return F.normalize(torch.cat(out), dim=-1)


def encode_texts(texts: list[str], spec: ClipSpec, device: torch.device | str) -> torch.Tensor:
    """Texts -> (n, d) float32 L2-normalised embeddings on ``device`` (truncated to the
    model's context length, as open_clip's tokenizer does)."""
    clip = load_clip(spec, device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), CHUNK):
            tokens = clip.tokenizer(texts[start : start + CHUNK]).to(clip.device)
            out.append(clip.model.encode_text(tokens).float())
    if not out:
        return torch.zeros(0, clip.embed_dim, device=clip.device)
    return F.normalize(torch.cat(out), dim=-1)


def image_embeddings(batch: Candidates, spec: ClipSpec, device: torch.device | str) -> torch.Tensor:
    """The batch's (n, d) L2-normalised image embeddings, computed once per batch and spec."""
    return batch.memo(("clip_image", spec), lambda: encode_images(batch.images, spec, device))


def text_embeddings(batch: Candidates, spec: ClipSpec, device: torch.device | str) -> torch.Tensor:
    """(n, d) L2-normalised embeddings of ``batch.prompts``, row-aligned with the images.

    Each distinct prompt is encoded once (a batch usually holds N candidates per prompt), and
    the result is memoised per batch and spec.
    """

    def compute() -> torch.Tensor:
        return per_prompt(batch.prompts, lambda texts: encode_texts(texts, spec, device))

    return batch.memo(("clip_text", spec), compute)


def per_prompt(prompts: list[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """``encode``'s (n, d) rows for ``prompts``, each distinct prompt encoded once (a batch
    usually holds N candidates per prompt)."""
    unique = list(dict.fromkeys(prompts))
    index = {p: i for i, p in enumerate(unique)}
    embs = encode(unique)
    return embs[torch.tensor([index[p] for p in prompts], dtype=torch.long, device=embs.device)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two (n, d) L2-normalised tensors, in [-1, 1]."""
    return (a * b).sum(dim=-1).clamp(-1.0, 1.0)
