"""``winnow train-head``: train a preference head on the stored image embeddings from a
reviewer's decisions (the training is ``winnow.scoring.train_head``); registered by
``winnow.flows.commands``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from winnow.flows.console import make_console, one_line_errors

out_console = make_console()  # results on stdout


def _spec(clip: dict) -> str:
    """A CLIP spec as a YAML flow mapping (values JSON-quoted: ``bundled:`` has a colon)."""
    import json

    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in clip.items() if v is not None) + "}"


def load(catalog: Path, run: str | None, holdout: float, seed: int):
    """(run ids, the embeddings' CLIP spec, train and held-out choices on the embeddings,
    held-out policy agreement (hits, prompts), prompts skipped, labelled candidates without
    a stored embedding)."""
    import numpy as np  # here, not at module level: `winnow --help` stays fast (torch, pandas)

    from winnow.catalog import embeddings
    from winnow.flows.labelled import labelled_runs, policy_choices
    from winnow.scoring.calibrate import Choices, agreement
    from winnow.scoring.holdout import LabelsError, check_sides, holdout_mask

    runs = labelled_runs(catalog, run)
    for r in runs:
        if r.manifest.embedding is None:
            raise LabelsError(
                f"run {r.manifest.run_id!r} stored no image embeddings (run.embeddings: none); "
                "train-head needs them: run it with run.embeddings: all"
            )
    specs = {r.manifest.run_id: r.manifest.embedding.clip for r in runs}  # type: ignore[union-attr]
    if len({_spec(c) for c in specs.values()}) > 1:
        shown = ", ".join(f"{k} {_spec(c)}" for k, c in specs.items())
        raise LabelsError(
            f"labelled runs have embeddings of different CLIPs ({shown}): choose one with --run"
        )
    trains, tests, before, skipped, missing = [], [], [0, 0], 0, 0
    for r in runs:
        labelled = r.rows["human_decision"].notna().to_numpy()
        keys = r.rows.loc[labelled, ["run_id", "shard_id", "candidate_id"]].itertuples(index=False)
        found, vectors = embeddings.load(catalog, keys)
        missing += int((~found).sum())
        usable = labelled.copy()
        usable[labelled] = found
        stored = np.zeros((len(r.rows), vectors.shape[1] if found.any() else 0), dtype=np.float32)
        stored[usable] = vectors
        data = policy_choices(r, usable)
        skipped += data.skipped
        held = holdout_mask(data.prompt_ids, holdout, seed)
        hits, n = agreement(data.subset(held), np.array([r.policy.weight(s) for s in r.names]))
        before = [before[0] + hits, before[1] + n]
        on_embeddings = Choices(stored[data.index], data.prompt, data.kept, data.prompt_ids, 0, data.index)
        trains.append(on_embeddings.subset(~held))
        tests.append(on_embeddings.subset(held))
    train, test = Choices.concat(trains), Choices.concat(tests)
    if missing and len(train.prompt_ids) + len(test.prompt_ids) == 0:
        raise LabelsError(
            f"{missing} labelled candidates have no stored embedding, leaving no prompt with a preference "
            "(run.embeddings: kept stores the kept ones' only; train-head needs the rejected ones too: "
            "run.embeddings: all)"
        )
    check_sides(len(train.prompt_ids), len(test.prompt_ids), skipped, holdout)
    clip = next(iter(specs.values()))
    return [r.manifest.run_id for r in runs], clip, train, test, tuple(before), skipped, missing


def train_head_command(
    out: Annotated[Path, typer.Option(help="the head file to write (FILE.safetensors)")],
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = Path("out/catalog"),
    run: Annotated[
        str | None, typer.Option(help="only this run's labels (default: every labelled run)")
    ] = None,
    holdout: Annotated[
        float,
        typer.Option(help="share of labelled prompts held out to measure on", min=0.05, max=0.95),
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="seed of the split (as calibrate's) and of the training")] = 0,
) -> None:
    """Train a preference head (the LAION aesthetic head's layout) on the stored CLIP image
    embeddings from the reviewer's decisions (winnow review), with calibrate's loss and split;
    prints top-1 agreement with the reviewer on the held-out prompts for the run's policy and
    for the trained head, and the scorer config that uses it."""
    import json

    import torch

    from winnow.scoring.holdout import LabelsError, share, top1
    from winnow.scoring.train_head import train, write_head

    with one_line_errors():
        if out.suffix != ".safetensors":
            raise LabelsError(f"--out {out}: the head is written as .safetensors; name it FILE.safetensors")
        runs, clip, train_data, test, before, skipped, missing = load(catalog, run, holdout, seed)
        trained = train(train_data, seed)
        with torch.no_grad():
            utility = trained.head(torch.as_tensor(test.features, dtype=torch.float32)).numpy()
        after = top1(test.prompt, test.kept, utility)
        write_head(
            out,
            trained.head,
            {"clip": clip, "runs": runs, "seed": seed, "holdout": holdout},
        )
        no_embedding = (
            f", {missing} labelled candidates without a stored embedding left out" if missing else ""
        )
        out_console.print(
            f"runs {', '.join(runs)}: {len(train_data.prompt_ids)} prompts to train on, "
            f"{len(test.prompt_ids)} held out, {skipped} skipped (all keep or all reject: no "
            f"preference){no_embedding}",
            markup=False,
        )
        out_console.print(
            f"trained {trained.best_epoch} of {trained.epochs} epochs (early stop on a validation "
            f"slice), choice loss {trained.train_loss:.3f} train / {trained.validation_loss:.3f} validation"
        )
        out_console.print(f"held-out top-1 agreement, current policy: {share(*before)}")
        out_console.print(f"held-out top-1 agreement, trained head:   {share(*after)}")
        out_console.print(
            f"{out}: use it as a head scorer (its score is a utility, higher is better):\n"
            f"scorers:\n  aesthetic: {{clip: {_spec(clip)}, head: {json.dumps(str(out.resolve()))}}}",
            markup=False,
            highlight=False,
        )
