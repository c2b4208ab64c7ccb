"""A catalog's labelled runs, read for the commands that learn from a reviewer's decisions
(``winnow calibrate``, ``winnow train-head``): the latest decision per candidate, each run's
policy over its rows, and the one held-out split (``winnow.scoring.holdout``) they report on.

Imported when those commands run, never at CLI start-up (it loads pandas and the catalog).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from winnow.catalog.labels import latest
from winnow.catalog.manifest import Manifest, read_manifest
from winnow.catalog.query import read_catalog
from winnow.catalog.schema import score_column
from winnow.scoring.calibrate import Choices, choices
from winnow.scoring.holdout import LabelsError, check_sides, holdout_mask
from winnow.scoring.select import Policy


@dataclass(frozen=True)
class LabelledRun:
    """One run with labels: its manifest, its policy, its rows (every candidate, the catalog
    view's columns) and the scorer names of its policy features (sorted)."""

    manifest: Manifest
    policy: Policy
    rows: pd.DataFrame
    names: list[str]


def labelled_runs(catalog: Path, run: str | None) -> list[LabelledRun]:
    """The runs of ``catalog`` (only ``run`` when given) whose candidates carry a decision,
    by run id; ``LabelsError`` when there are none."""
    if latest(catalog) is None:
        raise LabelsError(f"no labels in {catalog / 'labels'}: decide candidates with winnow review first")
    rows = read_catalog(catalog, run)
    runs = sorted(rows.loc[rows["human_decision"].notna(), "run_id"].unique())
    if not runs:
        raise LabelsError(f"no labels on the rows of {f'run {run!r}' if run else catalog}")
    out = []
    for run_id in runs:
        manifest = read_manifest(catalog, run_id)
        config = manifest.config
        mine = rows[rows["run_id"] == run_id].reset_index(drop=True)
        names = sorted(config.get("scorers", {}))
        missing = [n for n in names if score_column(n) not in mine.columns]
        if missing or not names:
            raise LabelsError(f"run {run_id!r} has no scores for {', '.join(missing) or 'any scorer'}")
        out.append(LabelledRun(manifest, Policy.model_validate(config.get("select", {})), mine, names))
    return out


def policy_choices(run: LabelledRun, usable: np.ndarray | None = None) -> Choices:
    """The preference data of ``run``: its policy's within-prompt normalised scores of the
    labelled candidates (``usable``: a bool per row, False leaves a row's label out)."""
    scores = {n: run.rows[score_column(n)].to_numpy(dtype=np.float64) for n in run.names}
    decisions = run.rows["human_decision"].tolist()  # keep, reject, or null: unlabelled
    if usable is not None:
        decisions = [d if ok else None for d, ok in zip(decisions, usable, strict=True)]
    return choices(scores, run.rows["prompt_id"].to_numpy(), decisions, run.policy.normalize)[1]


def split(data: Choices, holdout: float, seed: int) -> tuple[Choices, Choices]:
    """(train, held out) prompts of ``data`` by ``holdout_mask``; ``LabelsError`` unless each
    side has enough prompts with a preference."""
    held = holdout_mask(data.prompt_ids, holdout, seed)
    train, test = data.subset(~held), data.subset(held)
    check_sides(len(train.prompt_ids), len(test.prompt_ids), data.skipped, holdout)
    return train, test
