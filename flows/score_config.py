"""The config of ``winnow score``: the scorers, select and run sections of a run config.

Other sections (prompts, generator, runner) may be present and are ignored, so the config
of the run whose images are being compared can be used as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flows.config import ConfigError, RunConfig, _first_error
from scoring.base import REGISTRY
from scoring.select import Policy


class ScoreConfig(BaseModel):
    """The parts of a run config that scoring existing images uses; other sections are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    scorers: dict[str, dict[str, Any]] = Field(description="scorer name -> its parameters")
    select: Policy = Field(default_factory=Policy)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _scorers_known(self) -> ScoreConfig:
        for scorer, params in self.scorers.items():
            if scorer not in REGISTRY:
                raise ValueError(f"unknown scorer {scorer!r} (known: {', '.join(sorted(REGISTRY))})")
            try:
                REGISTRY[scorer].Params.model_validate(params or {})
            except ValidationError as err:
                raise ValueError(f"scorers.{scorer}: {_first_error(err)}") from None
        self.select.check(list(self.scorers))
        return self


def load_score_config(path: Path) -> ScoreConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({getattr(err, 'problem', err)})") from None
    try:
        return ScoreConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_first_error(err)}") from None
