"""Reading a model head (a small network on CLIP image embeddings, ``winnow.scoring.head``)
from one weights file, and keeping each loaded head once per process (used by ``aesthetic`` and ``nsfw``).

``read_state_dict`` also reads the HPS and ImageReward checkpoints (``winnow.scoring.hpsv2``).
Files are ``.safetensors`` or PyTorch state dicts (``.pth``/``.pt``/``.bin``); the latter are
read with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers, so a malicious file cannot run code.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from winnow.models.errors import ModelNotFoundError, WinnowError, first_line
from winnow.models.sources import resolve_file

H = TypeVar("H", bound=nn.Module)


class HeadFormatError(WinnowError):
    """A head file that is not a safe state dict of the expected layout."""


def read_state_dict(
    path: str | Path, what: str, error: type[WinnowError] = HeadFormatError, nested: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of the weights file at ``path``; ``what`` names it in the one-line errors,
    raised as ``error``. With ``nested``, a pickle holding ``{nested: {...}}`` (HPS's
    ``{"state_dict": ...}``) yields that inner dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as err:
        raise error(
            f"{what} {str(path)!r} is not a safe tensor file ({type(err).__name__}: {first_line(err)[:200]})"
        ) from None
    if nested is not None and isinstance(state, dict) and isinstance(state.get(nested), dict):
        state = state[nested]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise error(f"{what} {str(path)!r} holds no state dict of tensors")
    return state


class HeadCache(Generic[H]):
    """Heads by file reference and device, each loaded once per process (thread-safe).

    ``what`` names the head in errors (``nsfw head``); ``load(path)`` builds it from a local
    file, in eval mode.
    """

    def __init__(self, what: str, load: Callable[[Path], H]) -> None:
        self.what, self._load = what, load
        self._heads: dict[tuple[Path, str], H] = {}
        self._lock = threading.Lock()

    def path(self, ref: str) -> Path:
        """The local file of a head reference (``winnow.models.sources.resolve_file``: a local
        file, ``bundled:NAME``, ``hf://org/name[@revision]/FILE`` or ``https://...#sha256=HEX``),
        downloaded into the cache on first use."""
        return resolve_file(ref, self.what).path

    def get(self, ref: str, device: torch.device | str) -> H:
        """The head for ``ref`` on ``device``."""
        key = (self.path(ref).resolve(), str(torch.device(device)))
        with self._lock:
            if key not in self._heads:
                self._heads[key] = self._load(key[0]).to(device)
            return self._heads[key]
