"""Instruments for the GPU benchmark: where a winnow run's time goes, call by call, and what
the device ran.

- ``CallProbe`` times the phases of every pipeline call (text encoding, latent set-up, UNet,
  scheduler, VAE decode, the pipeline's post-processing) on the device's timeline (CUDA events;
  ``time.perf_counter`` on a CPU), the work winnow does after each call (scoring, the
  device-to-host copy, PNG and Parquet writes) and the device's idle time between calls, and
  counts UNet evaluations with a forward hook.
- ``kernel_classes`` sums a profile's kernel times by class (conv, GEMM, attention, norm,
  elementwise, layout transposes, memory copies) and names the attention kernels that ran.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

# Phases timed on the device's timeline, in call order, then the work after a call (scoring
# and the device-to-host copy on the device's timeline, the writes in host seconds).
DEVICE_PHASES = ("text_encoding", "latents", "unet", "scheduler", "vae_decode", "postprocess")
HOST_PHASES = ("scoring", "to_host", "png", "parquet")


class Clock:
    """Time stamps on the device's timeline: recorded CUDA events on a GPU (read once the
    device has caught up), ``perf_counter`` seconds on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start: Any, end: Any) -> float:
        """Milliseconds from ``start`` to ``end`` (call after ``torch.cuda.synchronize``)."""
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


@dataclass
class Call:
    """One pipeline call's marks: (phase, start, end) spans on the device timeline, host
    wall-clock seconds per host phase, and the UNet's evaluations and rows."""

    start: Any
    end: Any = None
    spans: list[tuple[str, Any, Any]] = field(default_factory=list)
    unet_marks: list[tuple[Any, Any]] = field(default_factory=list)
    vae_start: Any = None
    host_s: dict[str, float] = field(default_factory=dict)
    unet_rows: int = 0
    text_rows: int = 0
    vae_rows: int = 0
    images: torch.Tensor | None = None


class CallProbe:
    """Installed (``with probe.installed(pipe):``) around a winnow run on ``pipe``; ``calls``
    holds one ``Call`` per pipeline call. ``keep_images``: keep the first call's images (to
    compare settings on the same seeds)."""

    def __init__(self, device: torch.device, keep_images: bool = False) -> None:
        self.clock = Clock(device)
        self.keep_images = keep_images
        self.calls: list[Call] = []
        self._pending: Any = None

    @property
    def current(self) -> Call | None:
        return self.calls[-1] if self.calls else None

    @contextlib.contextmanager
    def installed(self, pipe: Any) -> Iterator[CallProbe]:
        from winnow.models import generator
        from winnow.pipeline import engine, generated, shard

        handles = []
        for name, module in pipe.components.items():
            if name.startswith("text_encoder") and isinstance(module, torch.nn.Module):
                handles += self._span_hooks(module, "text_encoding", self._count_text)
        handles += self._span_hooks(pipe.unet, None, self._count_unet)
        source = generated.GeneratedSource
        patches = [
            (generator.Generator, "_call", self._wrap_call(generator.Generator._call)),
            (generator, "initial_latents", self._wrap_device(generator.initial_latents, "latents")),
            (engine.Shard, "score", self._wrap_device(engine.Shard.score, "scoring")),
            (source, "encoders", self._wrap_device(source.encoders, "to_host")),
            (engine.Shard, "_write", self._wrap_host(engine.Shard._write, "png")),  # encode + write
            (shard, "write_part", self._wrap_host(shard.write_part, "parquet")),
            (pipe.vae, "decode", self._wrap_decode(pipe.vae.decode)),
        ]
        saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
        try:
            for owner, name, value in patches:
                setattr(owner, name, value)
            yield self
        finally:
            for owner, name, value in saved:
                if value is None:
                    delattr(owner, name)  # an instance's override (vae.decode): back to the class's
                else:
                    setattr(owner, name, value)
            for handle in handles:
                handle.remove()

    def _span_hooks(self, module: torch.nn.Module, phase: str | None, count: Any) -> list:
        def before(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            count(args, kwargs)
            self._pending = self.clock.mark()

        def after(mod: torch.nn.Module, args: tuple, output: Any) -> None:
            call, end = self.current, self.clock.mark()
            if call is None or call.end is not None:
                return
            if phase is None:
                call.unet_marks.append((self._pending, end))
            else:
                call.spans.append((phase, self._pending, end))

        return [
            module.register_forward_pre_hook(before, with_kwargs=True),
            module.register_forward_hook(after),
        ]

    def _count_unet(self, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        if self.current is not None:
            self.current.unet_rows += int(sample.shape[0])

    def _count_text(self, args: tuple, kwargs: dict) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if self.current is not None and isinstance(ids, torch.Tensor):
            self.current.text_rows += int(ids.shape[0])

    def _wrap_call(self, call: Any) -> Any:
        def timed(gen: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(Call(self.clock.mark()))
            out = call(gen, *args, **kwargs)
            made = self.calls[-1]
            made.end = self.clock.mark()
            if self.keep_images and len(self.calls) == 1:
                made.images = out[0].float().clone()
            return out

        return timed

    def _wrap_device(self, fn: Any, phase: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.clock.mark()
            out = fn(*args, **kwargs)
            call = self.current
            if call is not None:
                # Scoring inside a call is pruning's judge: part of the call, not after it.
                name = "prune_scoring" if phase == "scoring" and call.end is None else phase
                call.spans.append((name, start, self.clock.mark()))
            return out

        return timed

    def _wrap_decode(self, decode: Any) -> Any:
        def timed(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            start = self.clock.mark()
            out = decode(z, *args, **kwargs)
            call = self.current
            if call is not None and call.end is None:
                call.spans.append(("vae_decode", start, self.clock.mark()))
                call.vae_start = start  # the last decode's: pruning decodes previews mid-call
                call.vae_rows += int(z.shape[0])
            return out

        return timed

    def _wrap_host(self, fn: Any, phase: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            call, began = self.current, time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if call is not None:  # PNG writes run in a writer thread: their own seconds
                    call.host_s[phase] = call.host_s.get(phase, 0.0) + time.perf_counter() - began

        return timed

    def per_call(self) -> list[dict[str, float]]:
        """Per finished call: milliseconds per phase (the device's for ``DEVICE_PHASES``,
        scoring and the device-to-host copy; the host's for the PNG and Parquet writes), the
        call's device span (``pipeline``), the device's idle time before the next call
        (``gpu_idle``: the gap less the scoring and copies in it; None after the last), and
        the UNet's evaluations and rows. Synchronizes the device first."""
        if self.clock.cuda:
            torch.cuda.synchronize()
        ms = self.clock.ms
        out = []
        calls = [c for c in self.calls if c.end is not None]
        for k, call in enumerate(calls):
            row = dict.fromkeys((*DEVICE_PHASES, *HOST_PHASES), 0.0)
            for phase, start, end in call.spans:
                row[phase] = row.get(phase, 0.0) + ms(start, end)
            row["unet"] = sum(ms(s, e) for s, e in call.unet_marks)
            # Between UNet evaluations: guidance arithmetic, the scheduler's step, callbacks;
            # after the last one, its step up to the VAE decode.
            marks = call.unet_marks
            gaps = [ms(marks[i][1], marks[i + 1][0]) for i in range(len(marks) - 1)]
            if marks and call.vae_start is not None:
                gaps.append(ms(marks[-1][1], call.vae_start))
            row["scheduler"] = sum(gaps)
            last = next((e for p, s, e in reversed(call.spans) if p == "vae_decode"), None)
            row["postprocess"] = ms(last, call.end) if last is not None else 0.0
            row |= {phase: 1e3 * seconds for phase, seconds in call.host_s.items()}
            row["pipeline"] = ms(call.start, call.end)
            row["gpu_idle"] = None
            if k + 1 < len(calls):  # the gap to the next call less the device's work in it
                busy = row["scoring"] + row["to_host"]
                row["gpu_idle"] = max(0.0, ms(call.end, calls[k + 1].start) - busy)
            row |= {
                "unet_evals": len(marks),
                "unet_rows": call.unet_rows,
                "text_rows": call.text_rows,
                "vae_rows": call.vae_rows,
            }
            out.append(row)
        return out


def summarize_calls(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Median milliseconds per call of every phase over ``rows`` (``per_call`` output), the
    UNet's evaluations per call (all of them: a PNDM call of 25 steps runs 26) and totals."""
    if not rows:
        return {}
    phases = [*DEVICE_PHASES, *HOST_PHASES, "pipeline", "gpu_idle"]
    median = {}
    for phase in phases:
        values = [r[phase] for r in rows if r[phase] is not None]
        median[phase] = round(statistics.median(values), 3) if values else None
    return {
        "calls": len(rows),
        "median_ms": median,
        "unet_evals_per_call": sorted({r["unet_evals"] for r in rows}),
        "unet_rows": sum(r["unet_rows"] for r in rows),
        "text_rows": sum(r["text_rows"] for r in rows),
        "vae_rows": sum(r["vae_rows"] for r in rows),
    }


# Kernel (or CPU op) name patterns per class, tried in order: inductor's fused pointwise and
# reduction kernels first (their names list the ops they fused, "convolution" included).
KERNEL_CLASSES = (
    ("memcpy", r"memcpy|memset"),
    ("norm", r"^triton_(poi|red|per)_.*norm"),
    ("elementwise", r"^triton_(poi|red|per)_"),
    ("attention", r"flash|fmha|sdpa|attention|attn"),
    ("norm", r"norm|welford|moments"),
    ("conv", r"conv|fprop|dgrad|wgrad|implicit_gemm|winograd|mkldnn_conv"),
    ("gemm", r"gemm|nvjet|cutlass|matmul|cublas|triton_tem|\bmm\b|addmm|bmm|aten::mm|aten::linear"),
    ("layout", r"transpose|permute|nchw|nhwc|copy|\bcat\b|catarray|contiguous|clone"),
    ("elementwise", r"elementwise|reduce|softmax|gelu|silu|add|mul|div|sub|fill|index|where|cast|to_copy"),
)


def kernel_class(name: str) -> str:
    """The class of a kernel or op named ``name`` (see ``KERNEL_CLASSES``), else ``other``."""
    lowered = name.lower()
    return next((cls for cls, pattern in KERNEL_CLASSES if re.search(pattern, lowered)), "other")


def sdpa_backend(names: Iterable[str]) -> str | None:
    """Which fused attention ran, from the attention kernels' names: ``flash``,
    ``efficient`` (memory-efficient, xFormers/cutlass), ``cudnn``, ``math``; None if none."""
    joined = " ".join(n.lower() for n in names)
    if not joined:
        return None
    for backend, pattern in (("cudnn", r"cudnn"), ("flash", r"flash"), ("efficient", r"fmha|efficient")):
        if re.search(pattern, joined):
            return backend
    return "math"


def kernel_classes(kernels: Iterable[tuple[str, float]], top: int = 3) -> dict[str, Any]:
    """``kernels``: (name, self time in µs) per kernel or op. Per class: milliseconds, share of
    the total, count and the ``top`` names by time; plus the attention kernels' backend."""
    by_class: dict[str, dict[str, float]] = {}
    for name, us in kernels:
        names = by_class.setdefault(kernel_class(name), {})
        names[name] = names.get(name, 0.0) + us
    total = sum(sum(v.values()) for v in by_class.values()) or 1.0
    classes = {
        cls: {
            "ms": round(sum(names.values()) / 1e3, 3),
            "share": round(sum(names.values()) / total, 4),
            "kernels": len(names),
            "top": [n for n, _ in sorted(names.items(), key=lambda kv: -kv[1])[:top]],
        }
        for cls, names in sorted(by_class.items(), key=lambda kv: -sum(kv[1].values()))
    }
    attention = list(by_class.get("attention", {}))
    return {"total_ms": round(total / 1e3, 3), "classes": classes, "sdpa_backend": sdpa_backend(attention)}


def profile_kernels(prof: Any, cuda: bool) -> list[tuple[str, float]]:
    """(name, self µs) of a ``torch.profiler`` run's device kernels (on a GPU) or its
    innermost CPU ops (on a CPU, where there are no kernels: the same summary, for checking)."""
    from torch.autograd import DeviceType

    out = []
    for evt in prof.key_averages():
        if cuda and evt.device_type == DeviceType.CUDA:
            out.append((evt.key, float(evt.self_device_time_total)))
        elif not cuda and evt.device_type == DeviceType.CPU and evt.self_cpu_time_total > 0:
            out.append((evt.key, float(evt.self_cpu_time_total)))
    return out
