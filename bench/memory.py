"""Peak memory of a block of code: device memory on CUDA, resident set size on the CPU."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20


def rss_bytes() -> int:
    """This process's resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


@contextmanager
def peak_memory(device: torch.device, interval_s: float = 0.005) -> Iterator[dict[str, float]]:
    """Yield a dict that, after the block, holds ``peak_mib``: the most memory in use during
    the block, in MiB. CUDA: bytes allocated by PyTorch on ``device``. CPU: the process's
    resident set, sampled every ``interval_s`` seconds (peaks shorter than that can be missed)."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        return
    peak = [rss_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["peak_mib"] = max(peak[0], rss_bytes()) / MIB
