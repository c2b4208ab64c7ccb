"""Early pruning inside a pipeline call: after ``step`` denoising iterations, decode each
candidate's predicted final image (the scheduler's own x0 estimate, with the pipeline's VAE or
a cheaper tiny decoder), let a caller-supplied judge pick the survivors, and finish only those.

It rides on diffusers' public ``callback_on_step_end`` hook, whose returned tensors replace
the loop's own (the mechanism diffusers documents for changing ``prompt_embeds`` mid-run). The
batch shrinks there: the latents, the conditioning tensors, the scheduler's per-sample history
(multistep solvers keep earlier model outputs) and the per-candidate ``torch.Generator`` list
all drop the pruned rows, so every later UNet call runs on survivors only and the survivors'
images equal what an unpruned call gives them (up to float rounding of a smaller batch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from winnow.models.errors import WinnowError

Judge = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Prune:
    """Prune after ``step`` denoising iterations (1 <= step < steps).

    ``judge(rows, previews)`` gets the requests' indices of the batch's real (unpadded)
    candidates and their previews, an (n, 3, H, W) float tensor in [0, 1] on the device, and
    returns an (n,) bool tensor: True = keep denoising. Padding rows are always dropped.
    """

    step: int
    judge: Judge
    group: int = 1  # candidates per prompt: a call starts with whole groups ...
    finish: int = 1  # ... of which this many finish
    decoder: Any = None  # decodes the previews: None = the pipeline's VAE, or e.g. an AutoencoderTiny

    def call_size(self, batch_size: int) -> int:
        """Candidates a call starts with so that about ``batch_size`` of them finish: the
        denoising after the pruning step, most of the work, then runs at full batch size."""
        return self.group * max(1, round(batch_size / self.finish))


class StepRecorder:
    """Stands in for ``scheduler.step`` and keeps its last output, which holds the x0
    estimate (``pred_original_sample``) for schedulers that report one. Installed on the
    scheduler for the duration of a ``with`` block."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler, self.step = scheduler, scheduler.step
        self.last: Any = None
        # Pipelines pass `generator`/`eta` only if the step's signature takes them.
        functools.update_wrapper(self, scheduler.step)

    def __enter__(self) -> StepRecorder:
        self.scheduler.step = self
        return self

    def __exit__(self, *exc: object) -> None:
        vars(self.scheduler).pop("step", None)  # back to the class's method

    def __call__(self, *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        self.last = self.step(*args, return_dict=True, **kwargs)
        return self.last if return_dict else self.last.to_tuple()

    def x0(self) -> torch.Tensor:
        """The scheduler's estimate of the final latents from its last step."""
        estimate = getattr(self.last, "pred_original_sample", None)
        if estimate is not None:  # DDIM, DDPM, Euler, Euler ancestral, LMS, Heun, LCM, ...
            return estimate
        config = self.scheduler.config
        # Multistep solvers in data-prediction form keep the x0 estimate as their history.
        if config.get("algorithm_type", "").endswith("dpmsolver++") or config.get("predict_x0", False):
            return self.scheduler.model_outputs[-1]
        raise WinnowError(
            f"{type(self.scheduler).__name__} gives no estimate of the final image, which prune "
            "needs; use e.g. DPMSolverMultistepScheduler, UniPCMultistepScheduler or EulerDiscreteScheduler"
        )


def _rows(value: Any, keep: torch.Tensor, batch: int) -> Any:
    """A per-sample tensor of the loop restricted to the ``keep`` rows (classifier-free
    guidance doubles the conditioning: [uncond; cond])."""
    if not isinstance(value, torch.Tensor):
        return value
    return value[torch.cat([keep, keep + batch])] if value.shape[0] == 2 * batch else value[keep]


def _state(value: Any, keep: torch.Tensor, like: torch.Size) -> Any:
    """Scheduler state restricted to the ``keep`` rows where it is per-sample (latent-shaped,
    e.g. a multistep solver's history); schedules (timesteps, sigmas, ...) stay as they are."""
    if isinstance(value, list):
        return [_state(v, keep, like) for v in value]
    if isinstance(value, torch.Tensor) and value.ndim == len(like) + 1 and value.shape[1:] == like:
        return value[keep]
    return value


def _preview(pipe: Any, decoder: Any, latents: torch.Tensor) -> torch.Tensor:
    """Decode latents with ``decoder`` (None: the pipeline's VAE) to (n, 3, H, W) floats in
    [0, 1]. A VAE and diffusers' ``AutoencoderTiny`` share the interface: ``decode`` of
    latents divided by the model's ``scaling_factor`` (1.0 for a tiny one trained on the
    pipeline's scaled latents, as TAESD is) gives images in [-1, 1]."""
    vae = decoder or pipe.vae
    decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pt").float()


def pruning_callback(
    pipe: Any, prune: Prune, rows: list[int], alive: list[int], generators: list[torch.Generator]
) -> tuple[Callable[..., dict[str, Any]], StepRecorder]:
    """The ``callback_on_step_end`` for one call, and the recorder to enter (``with``) for
    its duration.

    ``rows``: the request index of each real candidate of the call (the call's later
    positions are padding). ``alive`` (positions in the call) and ``generators`` are shrunk
    in place to the survivors.
    """
    recorder = StepRecorder(pipe.scheduler)

    def on_step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if i != prune.step - 1:
            return {}
        latents = tensors["latents"]
        batch, real = latents.shape[0], len(rows)
        previews = _preview(pipe, prune.decoder, recorder.x0()[:real])
        verdict = prune.judge(rows, previews).to("cpu", torch.bool)
        keep = torch.nonzero(verdict).flatten()  # padding (positions >= real) never survives
        alive[:] = [alive[j] for j in keep.tolist()]
        generators[:] = [generators[j] for j in keep.tolist()]  # stochastic schedulers draw per row
        keep = keep.to(latents.device)
        for name, value in list(vars(pipe.scheduler).items()):
            if isinstance(value, list | torch.Tensor):
                setattr(pipe.scheduler, name, _state(value, keep, latents.shape[1:]))
        return {name: _rows(value, keep, batch) for name, value in tensors.items()}

    return on_step_end, recorder
