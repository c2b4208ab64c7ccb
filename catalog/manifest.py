"""The run manifest: one small JSON file per run, ``runs/<run_id>/_manifest.json``.

The leading underscore keeps it out of the run's Parquet dataset: pyarrow's and pandas'
dataset discovery skip ``_`` and ``.`` files, so ``pd.read_parquet("<root>/runs")`` still
reads only the parts.

Written atomically before the run's first part, it records what the rows alone cannot: the
full resolved config (every default filled in), the model references with the fingerprints
they resolved to, the library versions, and where the prompts came from. ``winnow
regenerate`` rebuilds the generator from it, so every setting the run used (single-file
config, channels-last, compile, VAE slicing, ...) is used again.

A manifest is written once and never rewritten: a resumed run (or a concurrent one with the
same id) finds it there and checks that it describes the same run (same config hash).
Catalogs written before manifests existed have none; readers fall back to the rows.
Manifests are JSON only: read with pydantic, never evaluated or unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from winnow.catalog.cleanup import remove_run_temps
from winnow.catalog.schema import VERSIONS
from winnow.catalog.writer import atomic_write
from winnow.models.errors import WinnowError
from winnow.models.sources import fingerprint, resolve

if TYPE_CHECKING:
    from winnow.pipeline.config import Config
    from winnow.pipeline.score_config import ScoreConfig

FORMAT_VERSION = 2  # 2: added ``embedding``
FILENAME = "_manifest.json"
_RUN_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")  # as RunConfig.run_id: a plain folder name
_WRITE_LOCK = threading.Lock()  # check-then-write: a process's first writer wins, the rest read it


class ManifestError(WinnowError):
    """A run manifest that is unreadable, or that describes another run."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Frozen):
    """A model reference as configured and the fingerprint it resolved to when the run began."""

    ref: str = Field(description="the reference as configured (bundled:NAME, a path, a hub id)")
    fingerprint: str | None = Field(
        description="hub commit sha or content hash of the local files; None when not known "
        "without a hub (remote references: hf-hub:, hf://, https://)"
    )


class PromptSource(_Frozen):
    """Where a run's prompts came from."""

    kind: Literal["path", "pool", "template", "sidecar", "csv", "filename"] = Field(
        description="generated runs: the prompts section used; external: --prompts-from"
    )
    file: str | None = Field(None, description="absolute path of the prompt file (path, pool, csv)")
    sha256: str | None = Field(None, description="sha256 of that file's bytes when the run began")
    folder: str | None = Field(None, description="external runs: absolute path of the image folder")
    prompts: int = Field(ge=0, description="distinct prompts in the run")


class Embedding(_Frozen):
    """The CLIP image embeddings a run stores (``winnow.catalog.embeddings``)."""

    clip: dict[str, Any] = Field(description="the CLIP spec that made them: {model, pretrained}")
    dtype: Literal["float16"] = Field("float16", description="stored element type (L2-normalised first)")
    stored: Literal["all", "kept"] = Field(description="run.embeddings: every candidate's, or kept ones'")


class Manifest(_Frozen):
    """Everything a run was made with (one per run, ``runs/<run_id>/_manifest.json``)."""

    format_version: int = Field(FORMAT_VERSION, description="this file's format version")
    run_id: str
    source: Literal["generated", "external"] = Field(description="as the rows' `source` column")
    config: dict[str, Any] = Field(
        description="the resolved config (generated: every section, defaults filled in; "
        "external: scorers, select and run settings)"
    )
    config_hash: str = Field(description="as the rows' `config_hash` column")
    models: dict[str, ModelRef] = Field(
        description="dotted config key -> the model it names, e.g. generator.model, prune.preview, "
        "scorers.aesthetic.head"
    )
    versions: dict[str, str] = Field(description="package -> version, as the rows' `versions` column")
    prompts: PromptSource
    created_at: datetime = Field(description="when the manifest was written (UTC)")
    embedding: Embedding | None = Field(
        None, description="the stored image embeddings' CLIP; None when none are stored"
    )


def manifest_path(root: str | Path, run_id: str) -> Path:
    """``<root>/runs/<run_id>/_manifest.json``; ``run_id`` must be a plain folder name."""
    if not _RUN_ID.fullmatch(run_id):
        raise ManifestError(f"run id {run_id!r} is not a valid run id")
    return Path(root) / "runs" / run_id / FILENAME


def find_manifest(root: str | Path, run_id: str) -> Manifest | None:
    """The manifest of run ``run_id``, or None if the run has none (written before manifests
    existed). An unreadable or invalid one is a ``ManifestError``."""
    path = manifest_path(root, run_id)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ManifestError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        manifest = Manifest.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise ManifestError(f"{path} is not a valid run manifest ({where}: {first['msg']})") from None
    if manifest.format_version > FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format version {manifest.format_version}; this winnow reads up to {FORMAT_VERSION}"
        )
    if manifest.run_id != run_id:
        raise ManifestError(f"{path} describes run {manifest.run_id!r}, not {run_id!r}")
    return manifest


def read_manifest(root: str | Path, run_id: str) -> Manifest:
    """The manifest of run ``run_id``; a ``ManifestError`` if it is missing or unreadable."""
    manifest = find_manifest(root, run_id)
    if manifest is None:
        raise ManifestError(f"run {run_id!r} in {root} has no manifest (written before manifests existed?)")
    return manifest


def write_manifest(root: str | Path, manifest: Manifest) -> Manifest:
    """Write ``manifest`` unless its run has one; return the one on disk.

    An existing manifest is left as it is (a resumed run) if it describes the same run (same
    source and config hash), else it is a ``ManifestError``: the run id was reused for other
    settings. Writers are serialised within a process; writers in several processes that all
    find none each rename a whole file into place (the last one's ``created_at`` stays).
    Every run (flow or ``winnow score``) writes it before any part, so this is also where the
    temp files of a killed earlier attempt are removed (``winnow.catalog.cleanup``).
    """
    path = manifest_path(root, manifest.run_id)
    remove_run_temps(root, manifest.run_id)  # left by a killed earlier attempt of this run
    with _WRITE_LOCK:
        existing = find_manifest(root, manifest.run_id)
        if existing is None:
            atomic_write(path, manifest.model_dump_json(indent=2).encode())
            return manifest
    if (existing.source, existing.config_hash) != (manifest.source, manifest.config_hash):
        raise ManifestError(
            f"run {manifest.run_id!r} in {root} was made with other settings ({existing.source}, "
            f"config hash {existing.config_hash}; now {manifest.source}, {manifest.config_hash}): "
            "use another run id"
        )
    return existing


def generated_manifest(config: Config, run_id: str, prompts: int) -> Manifest:
    """The manifest of a generated run of ``config`` with ``prompts`` prompts."""
    models = {"generator.model": _resolved(config.generator.model)}
    if config.generator.single_file_config:
        models["generator.single_file_config"] = _resolved(config.generator.single_file_config)
    if config.prune is not None and config.prune.preview != "vae":
        models["prune.preview"] = _resolved(config.prune.preview, pipeline=False)
    models |= scorer_models(config.scorers)
    section = config.prompts
    kind = "path" if section.path is not None else "pool" if section.pool is not None else "template"
    file = section.path or section.pool
    return Manifest(
        run_id=run_id,
        source="generated",
        config=config.model_dump(mode="json"),
        config_hash=config.result_hash(),
        models=models,
        versions=json.loads(VERSIONS),
        prompts=PromptSource(kind=kind, **_file(file), prompts=prompts),
        created_at=datetime.now(UTC),
        embedding=embedding_record(config),
    )


def embedding_record(config: Config | ScoreConfig) -> Embedding | None:
    """What ``config``'s runs store of the CLIP image embeddings (None: nothing)."""
    spec = config.stored_embedding
    if spec is None or config.run.embeddings == "none":
        return None
    return Embedding(clip=spec.model_dump(mode="json"), stored=config.run.embeddings)


def external_manifest(
    run_id: str,
    config: Mapping[str, Any],
    config_hash: str,
    folder: str | Path,
    prompts_from: str,
    prompts: int,
    embedding: Embedding | None = None,
) -> Manifest:
    """The manifest of a ``winnow score`` run: ``config`` holds its scorers, select and run
    settings, ``prompts_from`` is sidecar, filename or csv:FILE."""
    csv = prompts_from.removeprefix("csv:") if prompts_from.startswith("csv:") else None
    kind = "csv" if csv is not None else prompts_from
    return Manifest(
        run_id=run_id,
        source="external",
        config=json.loads(json.dumps(config)),  # plain JSON values, as it will be read back
        config_hash=config_hash,
        models=scorer_models(config.get("scorers", {})),
        versions=json.loads(VERSIONS),
        prompts=PromptSource(kind=kind, **_file(csv), folder=str(Path(folder).resolve()), prompts=prompts),
        created_at=datetime.now(UTC),
        embedding=embedding,
    )


def scorer_models(scorers: Mapping[str, Any]) -> dict[str, ModelRef]:
    """The model files each scorer's parameters name, by dotted key (``scorers.NAME.KEY``):
    ``bundled:`` models, existing paths (``local-dir:`` too), and remote files (``hf-hub:``,
    ``hf://``, ``https://``: their reference pins them or not, no fingerprint without the hub).
    Architecture names and pretrained tags (``ViT-L-14``, ``openai``) are no files: the config
    and the open_clip version record them."""
    found = {}
    for key, value in _strings(scorers, "scorers"):
        if value.startswith("bundled:"):
            found[key] = _resolved(value, pipeline=False)
        elif value.startswith(("hf-hub:", "hf://", "https://", "http://")):
            found[key] = ModelRef(ref=value, fingerprint=None)
        elif (path := Path(value.removeprefix("local-dir:")).expanduser()).exists():
            found[key] = ModelRef(ref=value, fingerprint=fingerprint(path))
    return found


def _strings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    """The string leaves of ``value`` (mappings and pydantic models, nested), by dotted key."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for name, item in value.items():
            yield from _strings(item, f"{key}.{name}")


def _resolved(ref: str, pipeline: bool = True) -> ModelRef:
    return ModelRef(ref=ref, fingerprint=resolve(ref, pipeline).fingerprint)


def _file(path: str | Path | None) -> dict[str, str | None]:
    if path is None:
        return {"file": None, "sha256": None}
    path = Path(path).resolve()
    try:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise ManifestError(f"cannot read prompt file {path}: {err.strerror or err}") from None
    return {"file": str(path), "sha256": digest}
