"""Where model weights come from: the one place that turns a model reference into files.

A reference is one of

- ``bundled:NAME``          a model shipped in this repository (``models/shapes/weights``),
- a local path               a diffusers folder, or a single-file ``.safetensors`` checkpoint,
- ``org/name[@revision]``    a Hugging Face hub id (the local cache is tried first): a
                             pipeline repo, or with ``pipeline=False`` one model's repo.

With no hub access and nothing local, resolution fails with a one-line ``ModelNotFoundError``
naming the model and how to provide it.

A single weights file (a model head: the LAION aesthetic predictor, an NSFW head, a trained
preference head) is named by a file reference, resolved by ``resolve_file``:

- ``bundled:NAME``                          a file shipped in this repository,
- a local path                              any existing file,
- ``hf://org/name[@revision]/path/in/repo`` a file in a hub repo, huggingface_hub's own URI
                                            grammar (``hf://datasets/...`` too, and the
                                            ``https://huggingface.co/org/name/blob/REV/FILE``
                                            links the website shows), fetched with
                                            ``hf_hub_download`` into the usual hub cache,
- ``https://HOST/.../FILE#sha256=HEX``      any other download, pinned by the file's sha256:
                                            fetched once into ``download_path`` (under
                                            ``$XDG_CACHE_HOME/winnow``, default ``~/.cache/winnow``),
                                            verified, then renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from winnow.models.errors import ModelNotFoundError, WinnowError, first_line

if TYPE_CHECKING:
    from huggingface_hub import HfUri

BUNDLED_ROOT = Path(__file__).parent / "shapes" / "weights"
BUNDLED = {
    "shapes-sd": BUNDLED_ROOT / "sd",
    "shapes-clip": BUNDLED_ROOT / "clip",
    "shapes-aesthetic": BUNDLED_ROOT / "aesthetic.safetensors",
    "shapes-preview": BUNDLED_ROOT / "preview",
    "shapes-pick": BUNDLED_ROOT / "pick",
}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")
_SINGLE_FILE_SUFFIXES = {".safetensors", ".ckpt"}

_PINNED_URL = re.compile(r"^(https://[^#\s]+)#sha256=([0-9a-fA-F]{64})$")
_FILE_NAME = re.compile(r"^[\w+-][\w+.-]*$")  # a plain file name: no separators, not hidden
_DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is given up

Kind = Literal["bundled", "local_dir", "single_file", "hub", "hub_file", "url"]


@dataclass(frozen=True)
class Source:
    """A resolved model: local ``path`` plus the identity recorded in the catalog."""

    ref: str
    kind: Kind
    path: Path
    fingerprint: str  # hub commit sha, a pinned file's sha256 (16 hex chars), or a content hash


class ChecksumError(WinnowError):
    """A downloaded file whose sha256 is not the one its reference pins."""


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


def cache_root() -> Path:
    """winnow's download cache: ``$XDG_CACHE_HOME/winnow`` (default ``~/.cache/winnow``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "winnow"


def download_path(url: str, sha256: str) -> Path:
    """Where a pinned download is kept: ``<cache_root>/files/<sha256>/<file name of the URL>``
    (the hash in the path keeps two files of one name apart; the name keeps its suffix)."""
    return cache_root() / "files" / sha256.lower() / unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def check_file_ref(ref: str) -> str:
    """``ref`` if it is a well-formed file reference (see the module doc), without touching the
    disk or the network; else ``ValueError`` saying what is wrong (for config validation)."""
    _parse_file_ref(ref)
    return ref


def _parse_file_ref(ref: str) -> tuple[Kind, HfUri | tuple[str, str] | None]:
    """The reference's kind and its parts: an ``HfUri``, or (url, sha256) of a pinned URL."""
    if ref.startswith("bundled:"):
        return "bundled", None
    pinned = _PINNED_URL.match(ref)
    if pinned:
        url, sha256 = pinned[1], pinned[2].lower()
        if not _FILE_NAME.match(unquote(urlsplit(url).path.rsplit("/", 1)[-1])):
            raise ValueError(f"{ref!r}: the URL's path must end in a file name")
        return "url", (url, sha256)
    if ref.startswith(("hf://", "http://", "https://")):
        from huggingface_hub import parse_hf_uri
        from huggingface_hub.errors import HfUriError

        try:
            uri = parse_hf_uri(ref)
        except HfUriError as err:
            if ref.startswith("hf://"):
                raise ValueError(f"not a hub file reference: {first_line(err)}") from None
            raise ValueError(
                f"{ref!r}: pin a download by its content, https://.../FILE#sha256=<64 hex digits> "
                "(or name a hub file as hf://org/name[@revision]/path/in/repo)"
            ) from None
        if uri.type not in ("model", "dataset", "space") or not uri.path_in_repo:
            raise ValueError(f"{ref!r}: name one file in a model repo, hf://org/name[@revision]/path/in/repo")
        return "hub_file", uri
    return "single_file", None


@functools.cache
def resolve_file(ref: str, what: str = "file") -> Source:
    """Resolve a file reference (see the module doc) to a local file, downloading it if needed.

    ``what`` names the file in errors (``aesthetic head``). Raises ``ModelNotFoundError`` (not
    here and not downloadable: the message says what to download and where to put it) or
    ``ChecksumError`` (a pinned file with other content), each one line.
    """
    try:
        kind, parts = _parse_file_ref(ref)
    except ValueError as err:
        raise ModelNotFoundError(f"{what} {err}") from None
    if kind == "bundled":
        source = resolve(ref)
        if not source.path.is_file():
            raise ModelNotFoundError(f"{what} {ref!r} is a bundled folder, not a file")
        return source
    if kind == "hub_file":
        assert not isinstance(parts, tuple | None)
        return _hub_file(ref, parts, what)
    if kind == "url":
        assert isinstance(parts, tuple)
        return _pinned_url(ref, *parts, what=what)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"{what} {ref!r} does not exist; give a local file, hf://org/name[@revision]/path/in/repo, "
            "https://.../FILE#sha256=<hex>, or bundled:NAME"
        )
    return Source(ref, "single_file", path, fingerprint(path))


def _hub_file(ref: str, uri: HfUri, what: str) -> Source:
    """``hf_hub_download`` (cache first; honours ``HF_HUB_OFFLINE``)."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(uri.id, uri.path_in_repo, repo_type=uri.type, revision=uri.revision))
    except Exception as err:  # offline, DNS failure, 404, gated repo, cache miss...
        revision = f" --revision {uri.revision}" if uri.revision else ""
        kind = "" if uri.type == "model" else f" --repo-type {uri.type}"
        raise ModelNotFoundError(
            f"{what} {ref!r} is not on this machine and cannot be fetched from the Hugging Face hub "
            f"({type(err).__name__}); pre-download it where the hub is reachable: "
            f"`hf download {uri.id} {uri.path_in_repo}{revision}{kind}`, or give the path of a local copy"
        ) from None
    # The hub cache keeps files at snapshots/<commit>/<path in repo>: the commit is the identity.
    commit = path.parents[len(Path(uri.path_in_repo).parts) - 1].name
    return Source(ref, "hub_file", path, commit)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _offline() -> bool:
    from huggingface_hub.constants import is_offline_mode

    return is_offline_mode()


def _pinned_url(ref: str, url: str, sha256: str, what: str) -> Source:
    """The cached copy of ``url`` (verified against ``sha256``), downloading it if missing."""
    dest = download_path(url, sha256)
    if not dest.is_file():
        why = "HF_HUB_OFFLINE is set" if _offline() else None
        if why is None:
            try:
                _download_to(url, sha256, dest)
            except OSError as err:  # URLError, HTTPError, timeouts, disk full: all OSErrors
                why = first_line(err)
        if why is not None:
            raise ModelNotFoundError(
                f"{what} {ref!r} is not in the download cache and cannot be downloaded ({why}); "
                f"download {url} and put it at {dest}, or give the path of a local copy"
            )
    elif (got := _sha256(dest)) != sha256:  # put there by hand, or altered since
        raise ChecksumError(
            f"{what} {dest} has sha256 {got}, not {sha256} as {ref!r} pins; delete it (it is "
            "downloaded again)"
        )
    return Source(ref, "url", dest, sha256[:16])


def _download_to(url: str, sha256: str, dest: Path) -> None:
    """Stream ``url`` into a temporary file beside ``dest``, check its sha256, rename it into
    place (so a crash or a concurrent download never leaves a partial file under ``dest``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".download-", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
                while chunk := response.read(2**20):
                    digest.update(chunk)
                    tmp.write(chunk)
            tmp.close()
            if digest.hexdigest() != sha256:
                raise ChecksumError(
                    f"{url} has sha256 {digest.hexdigest()}, not the pinned {sha256}; the file "
                    "changed or the pin is wrong (nothing was kept)"
                )
            os.replace(tmp.name, dest)
        finally:
            Path(tmp.name).unlink(missing_ok=True)
