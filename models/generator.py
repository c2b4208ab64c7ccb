"""The text-to-image generator: a diffusers pipeline driven in fixed-size, prompt-mixing batches.

Every candidate has its own ``torch.Generator`` seed, derived from (run seed, prompt id,
candidate index) and recorded in the catalog, so any candidate can be regenerated and a
candidate's image does not depend on which batch it landed in (up to float rounding).

Images stay on the generator's device until they must be written. A pipeline call that runs
out of device memory is retried at half the batch size (and the rest of the shard keeps the
smaller size), so a too-ambitious ``batch_size`` slows a run down instead of losing it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from winnow.catalog.schema import Generation
from winnow.models.errors import ModelNotFoundError, WinnowError, first_line
from winnow.models.prune import Prune, pruning_callback
from winnow.models.sources import Source, resolve

DType = Literal["auto", "float32", "float16", "bfloat16"]

log = logging.getLogger(__name__)


class GeneratorParams(BaseModel):
    """Generator settings (the ``generator:`` section of a run config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="bundled:NAME, a diffusers folder, a .safetensors file, or org/name[@rev]")
    single_file_config: str | None = Field(
        None, description="for a .safetensors checkpoint: a diffusers folder or hub id with its configs"
    )
    steps: int = Field(30, ge=1, le=1000, description="denoising steps")
    guidance: float = Field(7.5, ge=0.0, description="classifier-free guidance scale (0 or 1 = off)")
    width: int | None = Field(None, gt=0, multiple_of=8, description="pixels; unset = the model's default")
    height: int | None = Field(None, gt=0, multiple_of=8, description="pixels; unset = the model's default")
    negative_prompt: str = Field("", description="used for prompts that carry none of their own")
    scheduler: str | None = Field(None, description="a diffusers scheduler class name; unset = the model's")
    dtype: DType = Field("auto", description="auto = bfloat16/float16 on CUDA, float32 on CPU")
    device: str = Field("auto", description="auto = cuda when available, else cpu")
    batch_size: int = Field(
        8, ge=1, description="candidates per pipeline call (last one padded); with prune, survivors per call"
    )
    channels_last: bool = Field(False, description="UNet and VAE in channels-last memory format (GPU)")
    compile: bool = Field(False, description="torch.compile the UNet; one uncounted warm-up call per process")
    vae_slicing: bool = Field(False, description="decode latents one image at a time (less peak memory)")
    safety_checker: bool | None = Field(
        None,
        description="the pipeline's own safety checker (Stable Diffusion 1.x/2.x pipelines from the hub "
        "have one; it blacks out the images it flags, which winnow records in `safety_flagged` and "
        "rejects `safety_checker`): unset = keep what the pipeline has, false = remove it (never "
        "loaded), true = require one",
    )

    @model_serializer(mode="wrap")
    def _unset_safety_checker_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Run ids hash the dumped config: unset, it dumps as it did before the key existed.
        data = handler(self)
        if data.get("safety_checker", 0) is None:
            del data["safety_checker"]
        return data

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


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:1``, ... as a device.
    A CUDA device without a number is the current one (``torch.cuda.set_device``)."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        # The current device, by number: models are cached per device, and a process that is
        # moved to another GPU (a Ray worker, see flows/ray_runner.py) must not reuse them.
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def pick_device(params: GeneratorParams) -> tuple[torch.device, torch.dtype]:
    """Resolve ``device``/``dtype`` = auto: CUDA with bf16 (fp16 on older GPUs), else CPU fp32."""
    device = resolve_device(params.device)
    if params.dtype != "auto":
        return device, getattr(torch, params.dtype)
    if device.type == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


_PIPELINES: dict[tuple, object] = {}
_LOCK = threading.Lock()
# Pipelines are not thread-safe (the scheduler holds the running call's state), and shard
# tasks on a thread runner share one cached pipeline, so pipeline calls take turns.
_CALL_LOCK = threading.Lock()


def _pipeline_class(folder: Path) -> type:
    import diffusers

    return getattr(diffusers, json.loads((folder / "model_index.json").read_text())["_class_name"])


def _without_checker(folder: Path, params: GeneratorParams) -> dict[str, None]:
    """``safety_checker=None`` for loading when the config turns off a checker the pipeline in
    ``folder`` has (so its weights are never read), else nothing."""
    index = folder / "model_index.json"
    if params.safety_checker is not False or not index.is_file():
        return {}
    return {"safety_checker": None} if "safety_checker" in json.loads(index.read_text()) else {}


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
            str(source.path),
            config=str(config),
            dtype=dtype,
            local_files_only=True,
            **_without_checker(config, params),
        )
    else:
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(
                source.path, dtype=dtype, **_without_checker(source.path, params)
            )
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(f"model {source.ref!r} could not be loaded: {first_line(err)}") from None
    if params.safety_checker and getattr(pipe, "safety_checker", None) is None:
        raise WinnowError(
            f"generator.safety_checker is true but model {source.ref!r} ({type(pipe).__name__}) has no "
            "safety checker; leave it unset to run without one"
        )
    if params.scheduler:
        pipe.scheduler = getattr(diffusers, params.scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DistinctRows:
    """Forward hooks that make a text encoder encode each distinct input row once.

    Pipelines tokenize one row per candidate, so a call of 8 candidates of one prompt would
    encode that prompt 8 times (and the negative prompt 8 more). The pre-hook keeps the first
    of each distinct (token ids, attention mask) row; the hook gathers the outputs back to one
    row per input. Each row is encoded on its own (causal attention, no cross-row terms), so
    every row's embedding is what the full batch gives it, up to float rounding of a smaller
    batch.
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.index: torch.Tensor | None = None  # the running call's input row -> encoded row
        encoder.register_forward_pre_hook(self.before, with_kwargs=True)
        encoder.register_forward_hook(self.after)

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self.index = None
        ids = args[0] if args else kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            return None
        mask = kwargs.get("attention_mask")
        key = ids if mask is None else torch.cat([ids, mask.to(ids.dtype)], dim=1)
        position: dict[tuple, int] = {}  # distinct row -> its position among the encoded rows
        index, keep = [], []
        for i, row in enumerate(key.tolist()):
            index.append(position.setdefault(tuple(row), len(position)))
            if index[-1] == len(keep):
                keep.append(i)
        if len(keep) == len(index):
            return None
        self.index = torch.tensor(index, device=ids.device)
        rows = torch.tensor(keep, device=ids.device)
        if args:
            args = (ids[rows], *args[1:])
        else:
            kwargs["input_ids"] = ids[rows]
        if mask is not None:
            kwargs["attention_mask"] = mask[rows]
        return args, kwargs

    def after(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if self.index is None:
            return None
        index, self.index = self.index, None
        return _gather(output, index, int(index.max()) + 1)


def _gather(value: Any, index: torch.Tensor, encoded: int) -> Any:
    """``value`` (a tensor, tuple/list or dict/``ModelOutput`` of them) with every tensor of
    ``encoded`` rows expanded to one row per entry of ``index``."""
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)] if value.ndim and value.shape[0] == encoded else value
    if isinstance(value, dict):  # transformers' ModelOutput is an OrderedDict
        for key in list(value.keys()):
            value[key] = _gather(value[key], index, encoded)
        return value
    if isinstance(value, tuple | list):
        return type(value)(_gather(v, index, encoded) for v in value)
    return value


def _tune(pipe, params: GeneratorParams):  # -> DiffusionPipeline
    """Apply the speed settings. Attention needs none: diffusers already uses PyTorch's fused
    ``scaled_dot_product_attention`` (``AttnProcessor2_0``) by default."""
    for name, component in pipe.components.items():
        if name.startswith("text_encoder") and isinstance(component, torch.nn.Module):
            DistinctRows(component)
    if params.channels_last:
        # Convolutions dominate the UNet and VAE; cuDNN's fastest kernels want NHWC.
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if params.vae_slicing:
        pipe.vae.enable_slicing()
    if params.compile:
        # In place, so pipe.unet keeps its config and the pipeline keeps working unchanged.
        pipe.unet.compile(fullgraph=True)
    return pipe


@dataclass(frozen=True)
class CompileRecipe:
    """How ``torch.compile`` is applied to a pipeline by ``compile_pipeline``: the recipes
    ``bench/gpu.py`` measures (``compile: true`` compiles the UNet module whole, default mode).

    ``mode``: inductor's mode (``max-autotune``, ``max-autotune-no-cudagraphs``, ...; None =
    default). ``dynamic``: None lets PyTorch decide, False compiles one graph per shape.
    ``vae_decode``: compile the VAE's decode too. ``fuse_qkv``: diffusers'
    ``fuse_qkv_projections`` (one GEMM for q, k, v; changes float rounding). ``inductor``:
    ``torch._inductor.config`` flags for these graphs, e.g. ``(("conv_1x1_as_mm", True),)``.
    ``backend``: ``inductor``, or e.g. ``eager`` to check tracing without code generation.
    """

    mode: str | None = None
    fullgraph: bool = True
    dynamic: bool | None = None
    vae_decode: bool = False
    fuse_qkv: bool = False
    inductor: tuple[tuple[str, Any], ...] = ()
    backend: str = "inductor"


def compile_pipeline(pipe, recipe: CompileRecipe) -> None:
    """Compile ``pipe``'s UNet forward (and VAE decode) in place, as ``recipe`` says. The
    modules' ``__call__`` stays eager, so forward hooks on them run outside the graph and a
    hook never breaks it. Compilation happens at each new shape's first call."""
    if recipe.fuse_qkv:
        pipe.fuse_qkv_projections()
    options: dict[str, Any] = {}
    if recipe.backend == "inductor":
        from torch._inductor import list_mode_options

        # torch.compile takes a mode or options, not both: the mode's options plus the flags.
        options["options"] = list_mode_options(recipe.mode or "default") | dict(recipe.inductor)
    compile_ = functools.partial(
        torch.compile, fullgraph=recipe.fullgraph, dynamic=recipe.dynamic, backend=recipe.backend, **options
    )
    pipe.unet.forward = compile_(pipe.unet.forward)
    if recipe.vae_decode:
        pipe.vae.decode = compile_(pipe.vae.decode)


def _pipeline_key(params: GeneratorParams) -> tuple:
    source = resolve(params.model)
    device, dtype = pick_device(params)
    return (
        source.path,
        params.single_file_config,
        params.scheduler,
        device,
        dtype,
        params.channels_last,
        params.compile,
        params.vae_slicing,
        params.safety_checker,
    )


def unload_pipelines() -> None:
    """Forget the cached pipelines (and preview decoders), so that the next ``load_pipeline``
    loads afresh and the old ones' memory can be freed once nothing else holds them."""
    with _LOCK:
        _PIPELINES.clear()
        _PREVIEWS.clear()
        _WARM.clear()


def load_pipeline(params: GeneratorParams):  # -> DiffusionPipeline
    """The pipeline for ``params``, loaded once per process and reused by every task."""
    key = _pipeline_key(params)
    with _LOCK:
        if key not in _PIPELINES:
            pipe = _load(resolve(params.model), params, key[4]).to(key[3])
            _PIPELINES[key] = _tune(pipe, params)
        return _PIPELINES[key]


_PREVIEWS: dict[tuple, object] = {}


def load_preview_decoder(ref: str, params: GeneratorParams):  # -> AutoencoderTiny
    """The tiny decoder ``ref`` for pruning previews (a diffusers ``AutoencoderTiny`` folder
    or hub repo, e.g. TAESD) on ``params``' device and dtype, loaded once per process."""
    from diffusers import AutoencoderTiny

    source = resolve(ref, pipeline=False)
    device, dtype = pick_device(params)
    key = (source.path, device, dtype)
    with _LOCK:
        if key not in _PREVIEWS:
            try:
                decoder = AutoencoderTiny.from_pretrained(source.path, dtype=dtype)
            except (OSError, ValueError) as err:
                raise ModelNotFoundError(
                    f"prune.preview {ref!r} is not an AutoencoderTiny: {first_line(err)}"
                ) from None
            _PREVIEWS[key] = decoder.to(device).eval()
        return _PREVIEWS[key]


# Pipeline keys whose compiled UNet has run once (compilation happens at the first call).
_WARM: set[tuple] = set()


@dataclass(frozen=True)
class Request:
    """One candidate to generate."""

    prompt: str
    negative_prompt: str
    seed: int


@dataclass(frozen=True)
class Batch:
    """One pipeline call's output for ``requests[start:stop]``: ``images`` of the requests
    ``rows`` (all of them, or the survivors of pruning).

    ``size`` is the call's batch size, padding included: ``batch_size`` (less after an
    out-of-memory retry), or with pruning the larger size whose survivors fill it (the last
    pruned call: its requests, unpadded).
    ``seconds`` is the call's wall time.
    ``flagged``: per image, whether the pipeline's safety checker flagged it (and blacked it
    out); None when the pipeline has no checker.
    """

    index: int
    start: int
    stop: int
    size: int
    rows: tuple[int, ...]
    images: torch.Tensor  # (len(rows), 3, H, W) float32 in [0, 1], on the generator's device
    seconds: float
    flagged: tuple[bool, ...] | None = None


class Generator:
    """Generates candidates in fixed-size batches mixing prompts, one seed per candidate.

    ``oom_retries`` counts the calls that ran out of device memory and were retried at half
    the size; ``batch_size`` is the size the next call will use.
    """

    def __init__(self, params: GeneratorParams) -> None:
        self.params = params
        self.device, self.dtype = pick_device(params)
        self.batch_size = params.batch_size
        self.oom_retries = 0

    @property
    def identity(self) -> Generation:
        """What the catalog records about the model and settings (besides seeds)."""
        pipe = load_pipeline(self.params)
        return Generation(
            model=self.params.model,
            model_fingerprint=resolve(self.params.model).fingerprint,
            pipeline=type(pipe).__name__,
            scheduler=type(pipe.scheduler).__name__,
            steps=self.params.steps,
            guidance=self.params.guidance,
            width=self.params.width or _default_size(pipe),
            height=self.params.height or _default_size(pipe),
            dtype=str(self.dtype).removeprefix("torch."),
            device=self.device.type,
        )

    def preview_decoder(self, ref: str):  # -> AutoencoderTiny
        """``load_preview_decoder(ref)``, checked to read this pipeline's latents."""
        decoder = load_preview_decoder(ref, self.params)
        want, got = load_pipeline(self.params).vae.config.latent_channels, decoder.config.latent_channels
        if got != want:
            raise WinnowError(
                f"prune.preview {ref!r} decodes {got}-channel latents; this model's have {want}"
            )
        return decoder

    def generate(self, requests: Sequence[Request], prune: Prune | None = None) -> Iterator[Batch]:
        """Yield one ``Batch`` per ``batch_size`` requests, in order.

        The last batch is padded by repeating its last request, so every pipeline call has
        the same shape; the padding's outputs are dropped. A call that runs out of device
        memory is retried at half the size (see the module docstring); at size 1 the error
        is final. With ``prune``, each call finishes only the candidates its judge keeps, and
        starts with ``prune.call_size(batch_size)`` candidates so that the survivors fill a
        batch; its last call is not padded (pruning changes the shape mid-call anyway, and
        padding would only add candidate-steps to the first phase).
        """
        if not requests:
            return
        pipe = load_pipeline(self.params)
        self._warm_up(pipe, requests[0])
        index = start = 0
        while start < len(requests):
            size = self.batch_size
            if prune is not None:
                size = min(prune.call_size(size), len(requests) - start)
            chunk = list(requests[start : start + size])
            real = len(chunk)
            chunk += [chunk[-1]] * (size - real)
            began = time.perf_counter()
            try:
                images, alive, flags = self._call(pipe, chunk, start, real, prune)
            except torch.OutOfMemoryError:
                self._shrink(size)
                continue
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            rows = tuple(start + j for j in alive if j < real)
            seconds = time.perf_counter() - began
            flagged = None if flags is None else tuple(bool(f) for f in flags[: len(rows)])
            yield Batch(index, start, start + real, size, rows, images[: len(rows)].float(), seconds, flagged)
            index += 1
            start += real

    def _shrink(self, failed: int) -> None:
        """Halve the base batch size after a call of ``failed`` candidates ran out of memory
        (with prune a call holds more than the base size: its first phase)."""
        if self.batch_size == 1:
            raise WinnowError(
                f"out of memory at batch size 1 (call size {failed}); use a smaller width/height, "
                "generator.vae_slicing: true, or a GPU with more memory"
            ) from None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the failed call's blocks back before the retry
        before, self.batch_size = self.batch_size, self.batch_size // 2
        self.oom_retries += 1
        log.warning("out of memory at call size %d; batch size %d -> %d", failed, before, self.batch_size)

    def _warm_up(self, pipe, request: Request) -> None:
        """Trigger ``torch.compile``'s compilation outside the timed calls. The compiled graph
        depends on shapes, not on the step count, so two steps suffice."""
        key = _pipeline_key(self.params)
        if not self.params.compile or key in _WARM:
            return
        self._call(pipe, [request] * self.batch_size, 0, self.batch_size, steps=2)
        _WARM.add(key)

    def _call(
        self,
        pipe,
        chunk: list[Request],
        start: int,
        real: int,
        prune: Prune | None = None,
        steps: int | None = None,
    ) -> tuple[torch.Tensor, list[int], list[bool] | None]:
        """One pipeline call on ``chunk`` (requests ``start``.. of which the first ``real`` are
        not padding): the images, the positions in ``chunk`` they belong to, and per image
        the safety checker's verdict (None without a checker)."""
        # CPU generators: the same seed gives the same noise on every device (and ancestral
        # schedulers draw their per-step noise from them too).
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in chunk]
        alive = list(range(len(chunk)))
        hooks, recorder = {}, contextlib.nullcontext()
        if prune is not None:
            rows = list(range(start, start + real))
            callback, recorder = pruning_callback(pipe, prune, rows, alive, generators)
            hooks = {
                "callback_on_step_end": callback,
                "callback_on_step_end_tensor_inputs": list(pipe._callback_tensor_inputs),
            }
        with _CALL_LOCK, torch.inference_mode(), recorder:
            latents = initial_latents(pipe, generators, self.params.width, self.params.height, self.device)
            if latents is not None:
                hooks["latents"] = latents
            output = pipe(
                prompt=[r.prompt for r in chunk],
                negative_prompt=[r.negative_prompt for r in chunk],
                generator=generators,
                num_inference_steps=steps or self.params.steps,
                guidance_scale=self.params.guidance,
                width=self.params.width,
                height=self.params.height,
                output_type="pt",
                **hooks,
            )
        # Only pipelines with a checker report one (SD 1.x/2.x); SDXL's output has no such field.
        return output.images, alive, getattr(output, "nsfw_content_detected", None)


def initial_latents(
    pipe, generators: list[torch.Generator], width: int | None, height: int | None, device: torch.device
) -> torch.Tensor | None:
    """The call's initial noise, one row per CPU generator, built once on the host and moved
    to ``device`` in one copy (pinned, asynchronous on CUDA); None for a pipeline without a
    UNet-layout ``latents`` argument (it then draws its own).

    Drawn exactly as diffusers' ``randn_tensor`` draws from a list of CPU generators (one
    (1, C, h, w) draw per generator in the embeddings' dtype), so the same seed gives the same
    noise, and the same image, on any device and in any batch.
    """
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(pipe, "vae_scale_factor"):  # e.g. transformer pipelines
        return None
    if "latents" not in inspect.signature(pipe.__call__).parameters:
        return None
    # The pipelines draw in their prompt embeddings' dtype: the (last) text encoder's.
    encoder = getattr(pipe, "text_encoder_2", None) or getattr(pipe, "text_encoder", None) or unet
    scale = pipe.vae_scale_factor
    shape = (1, unet.config.in_channels, (height or _default_size(pipe)) // scale)
    shape += ((width or _default_size(pipe)) // scale,)
    host = torch.cat([torch.randn(shape, generator=g, dtype=encoder.dtype) for g in generators])
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _default_size(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) floats in [0, 1] -> (n, H, W, 3) uint8 on the same device, rounded as
    diffusers does (exact arithmetic, so the same bytes on every device)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``to_pixels`` on the CPU."""
    return to_pixels(images).cpu()
