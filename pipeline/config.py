"""The run configuration: a YAML file validated by pydantic, with CLI overrides.

Relative paths are relative to the directory ``winnow`` runs in. Every key is documented in
docs/config.md, generated from the Field descriptions (``python -m winnow.docs``); unknown keys
are errors, so a typo never passes silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from winnow.models.errors import WinnowError
from winnow.models.generator import GeneratorParams
from winnow.pipeline.templates import TemplateError, parse
from winnow.scoring.base import REGISTRY, ScorerParams
from winnow.scoring.clip import NAMED, ClipSpec
from winnow.scoring.head import embedding_spec
from winnow.scoring.select import Policy

M = TypeVar("M", bound=BaseModel)


class ConfigError(WinnowError):
    """A config file or override that is not valid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptsConfig(_Section):
    """Exactly one source: ``path``, ``pool`` or ``template`` (``flows/prompt_source.py``)."""

    path: Path | None = Field(None, description="prompt file: .txt, .csv, .tsv, .jsonl or .parquet")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts of `path`")
    pool: Path | None = Field(
        None, description="large prompt file (same formats): each run takes `sample` not yet in the catalog"
    )
    template: str | list[str] | None = Field(
        None, description="wildcard template(s): {a|b} alternatives, __name__ word lists"
    )
    wordlists: Path | None = Field(None, description="folder of <name>.txt word lists for __name__")
    sample: int | None = Field(
        None, ge=1, description="K: prompts per run from `pool` (required) or `template` (default: all)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> PromptsConfig:
        given = [key for key in ("path", "pool", "template") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of path, pool, template (got {', '.join(given) or 'none'})")
        if self.limit is not None and self.path is None:
            raise ValueError("limit applies to path only (use sample)")
        if self.sample is not None and self.path is not None:
            raise ValueError("sample applies to pool and template only (use limit)")
        if self.pool is not None and self.sample is None:
            raise ValueError("pool needs sample (prompts per run)")
        for text in [self.template] if isinstance(self.template, str) else self.template or []:
            try:  # syntax errors now, with their position; word lists are read per run
                parse(text)
            except TemplateError as err:
                raise ValueError(str(err)) from None
        return self


# Union member tags; they are left out of error locations.
_FIXED, _ROUNDS = "<N>", "<rounds>"


class CandidateRounds(_Section):
    """Adaptive N: generate ``min`` candidates per prompt, then ``min`` more per round for the
    prompts with fewer than ``until_kept`` eligible candidates (clearing every floor and
    ceiling), until each has them or has ``max`` candidates."""

    min: int = Field(ge=1, description="candidates per prompt in each round")
    max: int = Field(ge=1, description="most candidates per prompt, over all rounds")
    until_kept: int | None = Field(
        None, ge=1, description="eligible candidates wanted per prompt (default: select.keep)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> CandidateRounds:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class PruneConfig(_Section):
    """Early pruning: after ``at`` of the denoising steps, score each candidate's predicted
    final image and stop the worst ``drop`` of each prompt's candidates in the batch."""

    at: float = Field(gt=0, lt=1, description="fraction of generator.steps done when pruning")
    drop: float = Field(gt=0, lt=1, description="fraction of each prompt's candidates stopped")
    scorer: str = Field("clip_score", description="configured scorer that ranks the previews")
    preview: str = Field(
        "vae",
        description="what decodes the previews: vae = the pipeline's own; or a tiny decoder (a "
        "diffusers AutoencoderTiny: bundled:shapes-preview, a folder, or a hub id, e.g. madebyollin/taesd)",
    )

    def step(self, steps: int) -> int:
        """The denoising step after which candidates are pruned (1..steps-1)."""
        return round(self.at * steps)

    def survivors(self, candidates: int) -> int:
        """Candidates of a prompt that finish, of ``candidates`` in one batch (at least 1)."""
        return candidates - math.floor(self.drop * candidates)


class RunConfig(_Section):
    out: Path = Field(Path("out/catalog"), description="catalog folder (created if missing)")
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$",  # a folder name; never ".." or hidden
        description="default: a hash of the config, the prompts and the model weights",
    )
    seed: int = Field(0, ge=0, description="run seed; candidate seeds derive from it")
    candidates: Annotated[
        Annotated[PositiveInt, Tag(_FIXED)] | Annotated[CandidateRounds, Tag(_ROUNDS)],
        Discriminator(lambda v: _ROUNDS if isinstance(v, dict | CandidateRounds) else _FIXED),
    ] = Field(4, description="N: candidates per prompt, or adaptive {min, max, until_kept}")
    shard_size: int = Field(8, ge=1, description="prompts per shard (one task, one Parquet part)")
    save_rejected: bool = Field(False, description="also write PNGs of candidates not kept")
    contact_sheet: bool = Field(True, description="write contact-sheet-<run_id>.png (candidates vs kept)")
    embeddings: Literal["all", "kept", "none"] = Field(
        "all",
        description="store the candidates' CLIP image embedding (float16, 2 bytes per dimension: "
        "1.5 KB per row at 768-d) beside each part, for winnow rescore and winnow dedup: all "
        "candidates, kept ones only, or none",
    )
    compact: bool = Field(
        True,
        description="when the run has written every shard, merge its parts into a few large files "
        "sorted by prompt (runs/<run_id>/compacted-*.parquet, as `winnow catalog compact` does); "
        "a failed compaction is a warning and leaves the parts as they are",
    )


class RunnerConfig(_Section):
    kind: Literal["threads", "ray"] = Field(
        "threads", description="Prefect task runner: threads (this process) or ray (a Ray cluster)"
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="shards processed at once; threads: default 1; ray: size of the local cluster "
        "winnow starts (default: one worker per GPU, or per CPU without GPUs)",
    )
    address: str | None = Field(
        None,
        description="Ray cluster to join: auto, ray://HOST:10001 or HOST:6379; unset = start a local one",
    )
    gpus_per_task: float | None = Field(
        None, ge=0, le=1, description="GPUs Ray reserves per shard task; default 1 if the cluster has GPUs"
    )
    cpus_per_task: float = Field(
        1.0, gt=0, description="CPUs Ray reserves per shard task (also its torch threads on the CPU)"
    )
    retries: int = Field(
        2,
        ge=0,
        description="Prefect retries of a failed shard task (not for winnow's own errors); on Ray, "
        "also how often a shard whose worker process died is run again",
    )

    @field_validator("address")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"auto|ray://[^\s/]+|[^\s/:]+:\d+", value):
            raise ValueError("expected auto, ray://HOST:PORT or HOST:PORT (a Ray cluster's address)")
        return value

    @model_validator(mode="after")
    def _ray_keys(self) -> RunnerConfig:
        ray_only = {"address", "gpus_per_task", "cpus_per_task"} & self.model_fields_set
        if self.kind == "threads" and ray_only:
            raise ValueError(f"{', '.join(sorted(ray_only))} applies to kind: ray only")
        if self.address is not None and self.workers is not None:
            raise ValueError("workers sizes a local Ray cluster; a cluster at address has the workers it has")
        return self


class Scoring(BaseModel):
    """The ``clip``, ``scorers`` and ``select`` sections, shared by a run config and the config
    of ``winnow score``. Each scorer's parameters are validated here, once, into its typed
    ``Params``; a scorer's ``clip: NAME`` takes the spec of that name from ``clip``."""

    clip: dict[str, ClipSpec] = Field(
        default_factory=dict,
        description="named CLIP specs, name -> {model, pretrained}: a scorer's `clip: NAME` uses one, "
        "and scorers naming the same one share one image embedding per batch",
    )
    scorers: dict[str, ScorerParams] = Field(description="scorer name -> its parameters")
    select: Policy = Field(default_factory=Policy, description="the policy that keeps candidates per prompt")

    @model_validator(mode="before")
    @classmethod
    def _typed_scorers(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("scorers"), Mapping):
            named = _named_clips(data.get("clip"))
            data = {**data, "clip": named, "scorers": _scorer_params(data["scorers"], named)}
        return data

    @model_validator(mode="after")
    def _select_names_scorers(self) -> Scoring:
        self.select.check(list(self.scorers))
        if self.select.dedup is not None and self.stored_embedding is None:
            raise ValueError(
                "select.dedup compares CLIP image embeddings: configure a scorer that uses a CLIP"
            )
        return self

    @property
    def stored_embedding(self) -> ClipSpec | None:
        """The CLIP whose image embedding is stored and deduplicated
        (``winnow.scoring.head.embedding_spec``), or None when no scorer uses one."""
        return embedding_spec(self.scorers)

    @field_serializer("scorers")
    def _scorers_as_given(self, scorers: dict[str, ScorerParams]) -> dict[str, dict[str, Any]]:
        # As given (named CLIPs inline, no unset defaults): a dumped config validates back to
        # the same result_hash.
        return {name: params.as_given() for name, params in scorers.items()}


def _named_clips(raw: Any) -> dict[str, ClipSpec]:
    """The top-level ``clip`` section, validated (errors located at ``clip.NAME``)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError("clip: expected a mapping of name -> {model, pretrained}")
    named = {}
    for name, spec in raw.items():
        try:
            named[str(name)] = ClipSpec.model_validate(spec)
        except ValidationError as err:
            raise ValueError(_first_error(err, ("clip", name))) from None
    return named


def _scorer_params(raw: Mapping[str, Any], named: dict[str, ClipSpec]) -> dict[str, ScorerParams]:
    """Each scorer's parameters as its typed ``Params`` (CLIP names resolved from ``named``)."""
    params = {}
    for name, given in raw.items():
        if name not in REGISTRY:
            raise ValueError(f"unknown scorer {name!r} (known: {', '.join(sorted(REGISTRY))})")
        try:
            params[name] = REGISTRY[name].Params.model_validate(given or {}, context={NAMED: named})
        except ValidationError as err:
            raise ValueError(_first_error(err, ("scorers", name))) from None
    return params


class Config(_Section, Scoring):
    prompts: PromptsConfig = Field(description="where the prompts come from: one of path, pool, template")
    generator: GeneratorParams = Field(description="the text-to-image pipeline and how it is called")
    prune: PruneConfig | None = Field(None, description="early pruning (off by default)")
    run: RunConfig = Field(default_factory=RunConfig, description="the catalog, seeds, N, shards")
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig, description="where the shard tasks run: Prefect's thread or Ray runner"
    )

    @model_validator(mode="after")
    def _prune_fits(self) -> Config:
        if self.prune is not None:
            self._check_prune(self.prune)
        return self

    def _check_prune(self, prune: PruneConfig) -> None:
        if prune.scorer not in self.scorers:
            raise ValueError(f"prune.scorer {prune.scorer!r} is not one of the configured scorers")
        steps = self.generator.steps
        if not 1 <= prune.step(steps) < steps:
            raise ValueError(
                f"prune.at {prune.at} of {steps} steps prunes before the first or after the last"
            )
        per_round = self.rounds.min
        if prune.survivors(per_round) < min(self.select.keep, per_round):
            raise ValueError(
                f"prune.drop {prune.drop} leaves {prune.survivors(per_round)} of {per_round} "
                f"candidates per prompt, fewer than select.keep {self.select.keep}"
            )

    @property
    def rounds(self) -> CandidateRounds:
        """``run.candidates`` as rounds (a fixed N is one round of N)."""
        n = self.run.candidates
        rounds = n if isinstance(n, CandidateRounds) else CandidateRounds(min=n, max=n)
        return rounds if rounds.until_kept else rounds.model_copy(update={"until_kept": self.select.keep})

    @property
    def note(self) -> str | None:
        """One line for the run's notes when a setting leaves part of the run with nothing to do
        (valid, but rarely meant): ``select.keep`` not below the most candidates per prompt."""
        keep, most = self.select.keep, self.rounds.max
        if keep >= most:
            return (
                f"select.keep {keep} is not below the {most} candidates per prompt: every candidate "
                "that clears the floors and ceilings is kept, the ranking selects nothing"
            )
        return None

    def result_hash(self) -> str:
        """Hash of everything that changes the catalog's content (not where it goes). The
        ``clip`` section is left out: the specs the scorers use are in ``scorers``, inline."""
        # run.embeddings only adds files beside the parts and run.compact only merges them: the
        # rows are the same either way.
        exclude = {"run": {"out", "run_id", "embeddings", "compact"}, "runner": True, "clip": True}
        data = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _first_error(err: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    """The first error of ``err`` as one line; ``prefix`` locates a nested model's errors."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in (*prefix, *first["loc"]) if p not in (_FIXED, _ROUNDS))
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if first["type"] == "missing":
        return f"missing key {where!r}"
    value = first.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}{shown}" if where else msg


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate ``path``; ``overrides`` maps dotted keys to values (None = unset)."""
    path = Path(path)
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(data, key, value)
    return validate(Config, data, path)


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file, or a one-line ``ConfigError``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def validate(model: type[M], data: dict[str, Any], path: Path) -> M:
    """``model.model_validate(data)`` with its first error as a one-line ``ConfigError``."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_first_error(err)}") from None
