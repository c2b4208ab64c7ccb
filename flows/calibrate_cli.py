"""``winnow calibrate``: fit ``select.weights`` to a reviewer's decisions (the fit is
``winnow.scoring.calibrate``); registered by ``winnow.flows.commands``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

import typer

from winnow.flows.console import make_console, one_line_errors
from winnow.models.errors import first_line

out_console = make_console()  # results on stdout


def load(catalog: Path, run: str | None, holdout: float, seed: int):
    """(run id, scorer names, the run's policy, train choices, held-out choices, prompts skipped)."""
    from winnow.flows.labelled import labelled_runs, policy_choices, split  # pandas: not at start-up
    from winnow.scoring.calibrate import CalibrateError

    runs = labelled_runs(catalog, run)
    if len(runs) > 1:
        ids = ", ".join(r.manifest.run_id for r in runs)
        raise CalibrateError(f"labels span runs {ids}: choose one with --run")
    data = policy_choices(runs[0])
    train, test = split(data, holdout, seed)
    return runs[0].manifest.run_id, runs[0].names, runs[0].policy, train, test, data.skipped


def write_weights(config: Path, weights: dict[str, float]) -> None:
    """Set ``select.weights`` in the YAML ``config``, keeping its comments; written atomically."""
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.comments import CommentedMap

    from winnow.catalog.writer import atomic_write
    from winnow.scoring.calibrate import CalibrateError

    yaml = YAML()  # round trip: comments and key order survive
    try:
        data = yaml.load(config.read_text(encoding="utf-8"))
    except YAMLError as err:
        raise CalibrateError(f"{config}: not valid YAML ({first_line(err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("select") or {}, dict):
        raise CalibrateError(f"{config}: expected a config mapping with a 'select' mapping")
    if data.get("select") is None:
        data["select"] = {}
    old = data["select"].get("weights")
    new = CommentedMap(weights)
    if isinstance(old, CommentedMap) and old.fa.flow_style():
        new.fa.set_flow_style()  # written as the user wrote it: {a: 1, b: 0.5}
    data["select"]["weights"] = new
    out = io.StringIO()
    yaml.dump(data, out)
    atomic_write(config, out.getvalue().encode())


def calibrate_command(
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = Path("out/catalog"),
    run: Annotated[str | None, typer.Option(help="the run whose labels to use (needed if several)")] = None,
    holdout: Annotated[
        float,
        typer.Option(help="share of labelled prompts held out to measure on", min=0.05, max=0.95),
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="seed of the stable prompt_id-hash split")] = 0,
    write: Annotated[
        Path | None, typer.Option(help="update this YAML config's select.weights (comments kept)")
    ] = None,
) -> None:
    """Fit select.weights to the reviewer's decisions (winnow review): a conditional-logit fit
    over the policy's within-prompt normalised scores on a split of the labelled prompts;
    prints top-1 agreement with the reviewer on the held-out prompts before and after."""
    import numpy as np

    from winnow.scoring.calibrate import CalibrateError, agreement, fit, readable
    from winnow.scoring.holdout import share

    with one_line_errors():
        if write is not None and not write.is_file():
            raise CalibrateError(f"--write {write}: no such config file")
        run_id, names, policy, train, test, skipped = load(catalog, run, holdout, seed)
        before = np.array([policy.weight(n) for n in names])
        after = readable(fit(train))
        weights = {n: float(w) for n, w in zip(names, after, strict=True)}
        out_console.print(
            f"run {run_id}: {len(train.prompt_ids)} prompts to fit, {len(test.prompt_ids)} held out, "
            f"{skipped} skipped (all keep or all reject: no preference)"
        )
        out_console.print(f"held-out top-1 agreement, current weights: {share(*agreement(test, before))}")
        out_console.print(f"held-out top-1 agreement, fitted weights:  {share(*agreement(test, after))}")
        shown = ", ".join(f"{n}: {w:g}" for n, w in weights.items())
        if write is None:
            out_console.print(f"select:\n  weights: {{{shown}}}", markup=False, highlight=False)
        else:
            write_weights(write, weights)
            out_console.print(f"{write}: select.weights = {{{shown}}}", markup=False, highlight=False)
