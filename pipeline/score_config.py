"""The config of ``winnow score``: the clip, scorers, select and run sections of a run config.

Other sections (prompts, generator, runner) may be present and are ignored, so the config
of the run whose images are being compared can be used as it is. The scorers are validated
as in a run config (``winnow.pipeline.config.Scoring``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from winnow.pipeline.config import RunConfig, Scoring, read_yaml, validate


class ScoreConfig(Scoring):
    """The parts of a run config that scoring existing images uses; other sections are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run: RunConfig = Field(default_factory=RunConfig)


def load_score_config(path: Path) -> ScoreConfig:
    return validate(ScoreConfig, read_yaml(path), path)
