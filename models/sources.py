"""Where model weights come from: the one place that turns a model reference into files.

A reference is one of

- ``bundled:NAME``          a model shipped in this repository (``models/shapes/weights``),
- a local path               a diffusers folder, or a single-file ``.safetensors`` checkpoint,
- ``org/name[@revision]``    a Hugging Face hub id (the local cache is tried first): a
                             pipeline repo, or with ``pipeline=False`` one model's repo.

With no hub access and nothing local, resolution fails with a one-line ``ModelNotFoundError``
naming the model and how to provide it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from winnow.models.errors import ModelNotFoundError

BUNDLED_ROOT = Path(__file__).parent / "shapes" / "weights"
BUNDLED = {
    "shapes-sd": BUNDLED_ROOT / "sd",
    "shapes-clip": BUNDLED_ROOT / "clip",
    "shapes-aesthetic": BUNDLED_ROOT / "aesthetic.safetensors",
    "shapes-preview": BUNDLED_ROOT / "preview",
}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")
_SINGLE_FILE_SUFFIXES = {".safetensors", ".ckpt"}

Kind = Literal["bundled", "local_dir", "single_file", "hub"]


@dataclass(frozen=True)
class Source:
    """A resolved model: local ``path`` plus the identity recorded in the catalog."""

    ref: str
    kind: Kind
    path: Path
    fingerprint: str  # hub commit sha, or a content hash of local files (16 hex chars)


def fingerprint(path: Path) -> str:
    """Hash of a file or folder: contents of files up to 64 MiB, (name, size) of bigger ones."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path.parent)}:{size}\n".encode())
        if size <= 64 * 2**20:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _hub_error(ref: str, why: str) -> ModelNotFoundError:
    repo = ref.split("@", 1)[0]
    return ModelNotFoundError(
        f"model {ref!r} is not on this machine and the Hugging Face hub is unreachable ({why}); "
        f"give a local path instead (a diffusers folder or a .safetensors file), "
        f"or pre-download it where the hub is reachable: `hf download {repo}`"
    )


@functools.cache
def resolve(ref: str, pipeline: bool = True) -> Source:
    """Resolve a model reference to local files (downloading from the hub if reachable: a
    whole pipeline, or with ``pipeline=False`` a single model such as an ``AutoencoderTiny``)."""
    if ref.startswith("bundled:"):
        name = ref.removeprefix("bundled:")
        if name not in BUNDLED:
            raise ModelNotFoundError(f"unknown bundled model {name!r} (known: {', '.join(BUNDLED)})")
        path = BUNDLED[name]
        if not path.exists():
            raise ModelNotFoundError(f"bundled model {name!r} is missing at {path}; run `make train-shapes`")
        return Source(ref, "bundled", path, fingerprint(path))
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_dir():
            return Source(ref, "local_dir", path, fingerprint(path))
        if path.suffix in _SINGLE_FILE_SUFFIXES:
            return Source(ref, "single_file", path, fingerprint(path))
        raise ModelNotFoundError(
            f"model file {ref!r} is not a checkpoint (expected {sorted(_SINGLE_FILE_SUFFIXES)})"
        )
    if not _HUB_ID.match(ref) or ref.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model {ref!r}: no such local path, and not a hub id (org/name[@revision])")
    return _download(ref, pipeline)


def _download(ref: str, pipeline: bool) -> Source:
    """Fetch a hub repo (cache first): a diffusers pipeline with diffusers' own file selection,
    or one model's config and safetensors weights."""
    from diffusers import DiffusionPipeline  # heavy import, only for hub references
    from huggingface_hub import snapshot_download

    repo, _, revision = ref.partition("@")
    try:
        if pipeline:
            folder = Path(DiffusionPipeline.download(repo, revision=revision or None))
        else:
            folder = Path(
                snapshot_download(repo, revision=revision or None, allow_patterns=["*.json", "*.safetensors"])
            )
    except Exception as err:  # offline, DNS failure, 404, gated repo, cache miss...
        raise _hub_error(ref, type(err).__name__) from None
    return Source(ref, "hub", folder, folder.name)  # the snapshot folder is the commit sha
