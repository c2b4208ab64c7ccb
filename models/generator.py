"""The text-to-image generator: a diffusers pipeline driven in fixed-size, prompt-mixing batches.

Every candidate has its own ``torch.Generator`` seed, derived from (run seed, prompt id,
candidate index) and recorded in the catalog, so any candidate can be regenerated and a
candidate's image does not depend on which batch it landed in (up to float rounding).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.errors import ModelNotFoundError, WinnowError
from models.sources import Source, resolve

DType = Literal["auto", "float32", "float16", "bfloat16"]


class GeneratorParams(BaseModel):
    """Generator settings (the ``generator:`` section of a run config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="bundled:NAME, a diffusers folder, a .safetensors file, or org/name[@rev]")
    single_file_config: str | None = Field(
        None, description="for a .safetensors checkpoint: a diffusers folder or hub id with its configs"
    )
    steps: int = Field(30, ge=1, le=1000, description="denoising steps")
    guidance: float = Field(7.5, ge=0.0, description="classifier-free guidance scale (0 or 1 = off)")
    width: int | None = Field(None, gt=0, multiple_of=8, description="pixels; None = model default")
    height: int | None = Field(None, gt=0, multiple_of=8, description="pixels; None = model default")
    negative_prompt: str = Field("", description="used for prompts that carry none of their own")
    scheduler: str | None = Field(None, description="a diffusers scheduler class name; None = model's")
    dtype: DType = Field("auto", description="auto = bfloat16/float16 on CUDA, float32 on CPU")
    device: str = Field("auto", description="auto = cuda when available, else cpu")
    batch_size: int = Field(8, ge=1, description="candidates per pipeline call (last batch padded)")

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name: str | None) -> str | None:
        import diffusers

        if name is not None and not (name.endswith("Scheduler") and hasattr(diffusers, name)):
            raise ValueError(f"unknown diffusers scheduler {name!r} (e.g. EulerDiscreteScheduler)")
        return name


def candidate_seed(run_seed: int, prompt_id: str, index: int) -> int:
    """The seed of one candidate: a stable 63-bit hash of (run seed, prompt id, index)."""
    digest = hashlib.blake2b(f"{run_seed}:{prompt_id}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def pick_device(params: GeneratorParams) -> tuple[torch.device, torch.dtype]:
    """Resolve ``device``/``dtype`` = auto: CUDA with bf16 (fp16 on older GPUs), else CPU fp32."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if params.device == "auto" else params.device)
    if params.dtype != "auto":
        return device, getattr(torch, params.dtype)
    if device.type == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


_PIPELINES: dict[tuple, object] = {}
_LOCK = threading.Lock()


def _pipeline_class(folder: Path) -> type:
    import diffusers

    return getattr(diffusers, json.loads((folder / "model_index.json").read_text())["_class_name"])


def _load(source: Source, params: GeneratorParams, dtype: torch.dtype):  # -> DiffusionPipeline
    import diffusers
    from diffusers import AutoPipelineForText2Image

    diffusers.utils.logging.disable_progress_bar()  # winnow shows its own progress

    if source.kind == "single_file":
        if params.single_file_config:
            config = resolve(params.single_file_config).path
        else:
            from diffusers.loaders.single_file_utils import (
                fetch_diffusers_config,
                load_single_file_checkpoint,
            )

            repo = fetch_diffusers_config(load_single_file_checkpoint(str(source.path)))
            config = resolve(repo["pretrained_model_name_or_path"]).path
        pipe = _pipeline_class(config).from_single_file(
            str(source.path), config=str(config), dtype=dtype, local_files_only=True
        )
    else:
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(source.path, dtype=dtype)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelNotFoundError(f"model {source.ref!r} could not be loaded: {first}") from None
    if params.scheduler:
        pipe.scheduler = getattr(diffusers, params.scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(params: GeneratorParams):  # -> DiffusionPipeline
    """The pipeline for ``params``, loaded once per process and reused by every task."""
    source = resolve(params.model)
    device, dtype = pick_device(params)
    key = (source.path, params.single_file_config, params.scheduler, device, dtype)
    with _LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = _load(source, params, dtype).to(device)
        return _PIPELINES[key]


@dataclass(frozen=True)
class Request:
    """One candidate to generate."""

    prompt: str
    negative_prompt: str
    seed: int


@dataclass(frozen=True)
class Batch:
    """One pipeline call's output: images for ``requests[start:start + len(images)]``."""

    index: int
    start: int
    images: torch.Tensor  # (n, 3, H, W) float32 in [0, 1], on the generator's device
    seconds: float


class Generator:
    """Generates candidates in fixed-size batches mixing prompts, one seed per candidate."""

    def __init__(self, params: GeneratorParams) -> None:
        self.params = params
        self.device, self.dtype = pick_device(params)

    @property
    def identity(self) -> dict[str, object]:
        """What the catalog records about the model and settings (besides seeds)."""
        pipe = load_pipeline(self.params)
        return {
            "model": self.params.model,
            "model_fingerprint": resolve(self.params.model).fingerprint,
            "pipeline": type(pipe).__name__,
            "scheduler": type(pipe.scheduler).__name__,
            "steps": self.params.steps,
            "guidance": self.params.guidance,
            "width": self.params.width or _default_size(pipe),
            "height": self.params.height or _default_size(pipe),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.type,
        }

    def generate(self, requests: Sequence[Request]) -> Iterator[Batch]:
        """Yield one ``Batch`` per ``batch_size`` requests, in order.

        The last batch is padded by repeating its last request, so every pipeline call has
        the same shape; the padding's outputs are dropped.
        """
        import time

        if not requests:
            return
        pipe = load_pipeline(self.params)
        size = self.params.batch_size
        for index, start in enumerate(range(0, len(requests), size)):
            chunk = list(requests[start : start + size])
            real = len(chunk)
            chunk += [chunk[-1]] * (size - real)
            began = time.perf_counter()
            images = self._call(pipe, chunk)[:real]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            yield Batch(index, start, images.float(), time.perf_counter() - began)

    def _call(self, pipe, chunk: list[Request]) -> torch.Tensor:
        try:
            with torch.inference_mode():
                return pipe(
                    prompt=[r.prompt for r in chunk],
                    negative_prompt=[r.negative_prompt for r in chunk],
                    # CPU generators: the same seed gives the same noise on every device.
                    generator=[torch.Generator("cpu").manual_seed(r.seed) for r in chunk],
                    num_inference_steps=self.params.steps,
                    guidance_scale=self.params.guidance,
                    width=self.params.width,
                    height=self.params.height,
                    output_type="pt",
                ).images
        except torch.OutOfMemoryError:
            raise WinnowError(
                f"out of memory generating a batch of {len(chunk)}; lower generator.batch_size"
            ) from None


def _default_size(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) floats in [0, 1] -> (n, H, W, 3) uint8 on the CPU, rounded as diffusers does."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
