"""The config of ``winnow score``: the scorers, select and run sections of a run config.

Other sections (prompts, generator, runner) may be present and are ignored, so the config
of the run whose images are being compared can be used as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from winnow.pipeline.config import RunConfig, check_scorers, read_yaml, validate
from winnow.scoring.select import Policy


class ScoreConfig(BaseModel):
    """The parts of a run config that scoring existing images uses; other sections are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    scorers: dict[str, dict[str, Any]] = Field(description="scorer name -> its parameters")
    select: Policy = Field(default_factory=Policy)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _scorers_known(self) -> ScoreConfig:
        check_scorers(self.scorers, self.select)
        return self


def load_score_config(path: Path) -> ScoreConfig:
    return validate(ScoreConfig, read_yaml(path), path)
