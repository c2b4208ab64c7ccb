"""The image source: existing image files, scored and selected like generated candidates.

Images with the same prompt are the candidates of that prompt, ranked and kept by the policy.
Rows get ``source = 'external'``; generator columns (seed, model, steps, ...) are null,
``width`` / ``height`` are the image's own, ``prompt_meta`` records the file (``{"file":
relative path}``). Kept images (all of them with ``save_rejected``) are copied byte for byte
(not re-encoded) into ``images/<run_id>/<candidate_id><suffix>``: names come from ids, never
from prompt text or file names.

Prompts come from (``prompts_from``):

- ``sidecar``: ``<image stem>.txt`` beside each image (its stripped text);
- ``csv:FILE``: a CSV file with columns ``file`` (path relative to the folder, or a bare
  file name) and ``prompt``;
- ``filename``: the file's stem with ``_`` turned into spaces.

Files that are not readable images, or that have no prompt, are listed and skipped, never
fatal. A scoring run's id defaults to a hash of the scorers, policy and the images (paths,
prompts, bytes), so running it again resumes it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from winnow.catalog.schema import Generation
from winnow.models.errors import WinnowError
from winnow.models.generator import resolve_device
from winnow.pipeline.engine import Candidate, Encoder, Progress, Settings, Shard, ShardPlan, Source
from winnow.pipeline.prompts import Prompt, prompt_id
from winnow.pipeline.score_config import ScoreConfig

SIDECAR_SUFFIXES = {".txt", ".caption"}
BATCH = 16  # images per scorer call (images of one size)


class ExternalImagesError(WinnowError):
    """A folder or prompt source that cannot be used at all."""


@dataclass(frozen=True)
class Found:
    """A readable image with its prompt."""

    path: Path
    rel: str  # path relative to the scanned folder, with forward slashes
    prompt: str
    sha256: str


@dataclass(frozen=True)
class ImageJob:
    """A ``winnow score`` run: the images found, grouped by prompt, and what scores them.
    ``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ..."""

    config: ScoreConfig
    root: Path
    device: str
    run_id: str
    prompts: tuple[Prompt, ...]  # one per distinct prompt text, in the order first found
    images: Mapping[str, tuple[Found, ...]]  # prompt id -> its images, in folder order
    skipped: tuple[tuple[str, str], ...]  # (file, why) of the files left out
    config_hash: str  # hash of the settings that determine the content: scorers and policy


def _csv_prompts(spec: str) -> dict[str, str]:
    path = Path(spec)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = {name.strip().lower(): name for name in reader.fieldnames or []}
            if "file" not in fields or "prompt" not in fields:
                raise ExternalImagesError(f"{path}: needs columns 'file' and 'prompt'")
            return {row[fields["file"]].strip(): row[fields["prompt"]] for row in reader}
    except OSError as err:
        raise ExternalImagesError(f"cannot read prompt CSV {path}: {err.strerror or err}") from None


def find_images(folder: str | Path, prompts_from: str) -> tuple[list[Found], list[tuple[str, str]]]:
    """The readable images under ``folder`` (recursive, hidden files ignored, sorted) with
    their prompts, and the skipped files as (relative path, reason)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExternalImagesError(f"image folder not found: {folder}")
    table: dict[str, str] | None = None
    csv_file: Path | None = None
    if prompts_from.startswith("csv:"):
        csv_file = Path(prompts_from[4:]).resolve()
        table = _csv_prompts(prompts_from[4:])
    elif prompts_from not in ("sidecar", "filename"):
        raise ExternalImagesError(f"--prompts-from {prompts_from!r}: use sidecar, csv:FILE or filename")
    found, skipped = [], []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.resolve() == csv_file or (prompts_from == "sidecar" and path.suffix in SIDECAR_SUFFIXES):
            continue
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            skipped.append((rel, f"not a readable image ({type(err).__name__})"))
            continue
        if prompts_from == "filename":
            prompt = path.stem.replace("_", " ").strip()
        elif prompts_from == "sidecar":
            sidecar = path.with_suffix(".txt")
            prompt = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        else:
            assert table is not None
            prompt = table.get(rel, table.get(path.name, "")).strip()
        if not prompt:
            skipped.append((rel, f"no prompt ({prompts_from})"))
            continue
        found.append(Found(path, rel, prompt, hashlib.sha256(data).hexdigest()))
    return found, skipped


def scan(
    folder: str | Path,
    prompts_from: str,
    config: ScoreConfig,
    root: str | Path,
    device: str = "auto",
    run_id: str | None = None,
) -> ImageJob:
    """The scoring run of the images under ``folder``, into the catalog at ``root``."""
    found, skipped = find_images(folder, prompts_from)
    if not found:
        raise ExternalImagesError(f"no readable images with prompts in {folder} ({len(skipped)} skipped)")
    by_prompt: dict[str, list[Found]] = {}
    for f in found:
        by_prompt.setdefault(f.prompt, []).append(f)
    prompts = tuple(Prompt(prompt_id(text, ""), text, "") for text in by_prompt)
    images = {p.id: tuple(by_prompt[p.text]) for p in prompts}
    settings = config.model_dump(mode="json", include={"scorers", "select"})
    config_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    if run_id is None:
        digest = hashlib.sha256(f"external\x1e{config_hash}".encode())
        for f in found:
            digest.update(f"{f.rel}\x1f{f.prompt}\x1f{f.sha256}\x1e".encode())
        run_id = "ext-" + digest.hexdigest()[:12]
    return ImageJob(config, Path(root), device, run_id, prompts, images, tuple(skipped), config_hash)


class ImageSource(Source):
    name = "external"

    def __init__(self, job: ImageJob, plan: ShardPlan) -> None:
        self.job = job
        config = job.config
        settings = Settings(
            job.root,
            config.scorers,
            config.select,
            config.run.save_rejected,
            job.config_hash,
            config.run.embeddings,
        )
        super().__init__(plan, settings, resolve_device(job.device))

    def expected(self) -> int:
        return sum(len(self.job.images[p.id]) for p in self.plan.prompts)

    def make(self, shard: Shard, report: Progress) -> None:
        made: list[Candidate] = []
        pixels: list[torch.Tensor] = []
        for p, prompt in enumerate(self.plan.prompts):
            for f in self.job.images[prompt.id]:
                with Image.open(f.path) as img:
                    rgb = np.asarray(img.convert("RGB"))
                image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
                size = Generation(width=image.shape[2], height=image.shape[1], device=self.device.type)
                made.append(shard.add(p, size, f.path, json.dumps({"file": f.rel}, ensure_ascii=False)))
                pixels.append(image)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(pixels):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for indices in by_size.values():
            for begin in range(0, len(indices), BATCH):
                chunk = indices[begin : begin + BATCH]
                shard.score([made[i] for i in chunk], torch.stack([pixels[i] for i in chunk]).to(self.device))
                report(len(chunk), 0)
        for p in range(len(self.plan.prompts)):
            shard.settle(p)

    def encoders(self, candidates: list[Candidate]) -> list[Encoder]:
        return [(c.image.suffix.lower(), c.image.read_bytes) for c in candidates]
