"""Train a preference head on stored CLIP image embeddings from a reviewer's decisions
(``winnow train-head``).

The head has the LAION improved-aesthetic-predictor layout (``winnow.scoring.aesthetic``:
Linear d->1024, Dropout 0.2, Linear 1024->128, Dropout 0.2, Linear 128->64, Dropout 0.1,
Linear 64->16, Linear 16->1, keys ``layers.{0,2,4,6,7}.{weight,bias}``), so the file it writes
loads as an ordinary ``aesthetic`` head. Its score is a utility: the log-odds scale of the
choice model below (one unit more = e times the odds of being kept), comparable only within a
prompt, which is all the policy's per-prompt normalisation uses.

The loss is calibrate's conditional logit (Bradley–Terry within a prompt) on the head's
outputs: each kept candidate of a prompt is chosen over that prompt's rejected ones with
probability ``exp(u_kept) / (exp(u_kept) + sum exp(u_rejected))``. Full-batch AdamW with
weight decay; a validation slice of the training prompts (``VALIDATION`` of them, at least
one, chosen by a hash of the prompt id and the seed) stops the training when its loss has not
improved for ``PATIENCE`` epochs, and the best epoch's weights are kept. Everything random
(initial weights, dropout) comes from ``seed``: the same data and seed give the same head.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from winnow.catalog.writer import atomic_write
from winnow.scoring.aesthetic import AestheticHead
from winnow.scoring.calibrate import Choices
from winnow.scoring.holdout import unit

HIDDEN = (1024, 128, 64, 16)  # the LAION head's hidden widths
DROPOUT = (0.2, 0.2, 0.1)  # after the first three Linear layers, as LAION trained theirs
VALIDATION = 0.2  # share of the training prompts that stops the training early
PATIENCE = 30  # epochs without a better validation loss before stopping
MAX_EPOCHS = 400
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2


@dataclass(frozen=True)
class Trained:
    """A trained head (eval mode) and how its training went: ``epochs`` run, ``best_epoch``
    (whose weights the head has), and the mean per-choice negative log-likelihood (nats) on the
    fitting and the validation prompts at that epoch."""

    head: AestheticHead
    epochs: int
    best_epoch: int
    train_loss: float
    validation_loss: float


def laion_layout(width: int) -> AestheticHead:
    """A freshly initialised head of the LAION layout for ``width``-d embeddings (uses the
    global torch generator: seed it first)."""
    sizes = (width, *HIDDEN)
    modules: list[nn.Module] = []
    for i in range(len(HIDDEN)):
        modules.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(DROPOUT):
            modules.append(nn.Dropout(DROPOUT[i]))
    modules.append(nn.Linear(HIDDEN[-1], 1))
    return AestheticHead(nn.Sequential(*modules))


def comparisons(data: Choices) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, L) long rows of each choice (the kept row first, then its prompt's rejected rows,
    padded with 0) and the (C, L) bool mask of real entries: one choice per kept row."""
    choices = []
    for p in range(len(data.prompt_ids)):
        rows = np.flatnonzero(data.prompt == p)
        rejected = rows[~data.kept[rows]].tolist()
        choices += [[int(k), *rejected] for k in rows[data.kept[rows]]]
    width = max((len(c) for c in choices), default=1)
    index = torch.zeros((len(choices), width), dtype=torch.long)
    mask = torch.zeros((len(choices), width), dtype=torch.bool)
    for i, c in enumerate(choices):
        index[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = True
    return index, mask


def choice_loss(utility: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (nats) of the choices ``index``/``mask`` under ``utility`` (n,)."""
    u = utility[index].masked_fill(~mask, -math.inf)
    return (torch.logsumexp(u, dim=1) - u[:, 0]).mean()


def validation_mask(prompt_ids: list, seed: int) -> np.ndarray:
    """bool per prompt: in the validation slice (the ``VALIDATION`` share with the lowest hash of
    prompt id and seed, at least one, and never all)."""
    count = min(max(1, round(VALIDATION * len(prompt_ids))), len(prompt_ids) - 1)
    order = np.argsort([unit(pid, f"validation:{seed}") for pid in prompt_ids], kind="stable")
    out = np.zeros(len(prompt_ids), dtype=bool)
    out[order[:count]] = True
    return out


def train(data: Choices, seed: int = 0) -> Trained:
    """Train a head on ``data`` (features: (n, d) L2-normalised image embeddings; at least two
    prompts with a preference) by the module's recipe."""
    val = validation_mask(data.prompt_ids, seed)
    fit_data, val_data = data.subset(~val), data.subset(val)
    x_fit = torch.as_tensor(fit_data.features, dtype=torch.float32)
    x_val = torch.as_tensor(val_data.features, dtype=torch.float32)
    fit_choices, val_choices = comparisons(fit_data), comparisons(val_data)
    with torch.random.fork_rng(devices=[]):  # seeded here, the caller's generator untouched
        torch.manual_seed(seed)
        head = laion_layout(data.features.shape[1])
        optimiser = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        best = (math.inf, 0, math.inf, {k: v.clone() for k, v in head.state_dict().items()})
        epoch = 0
        for epoch in range(1, MAX_EPOCHS + 1):
            head.train()
            optimiser.zero_grad()
            choice_loss(head(x_fit), *fit_choices).backward()
            optimiser.step()
            head.eval()
            with torch.no_grad():
                val_loss = float(choice_loss(head(x_val), *val_choices))
                fit_loss = float(choice_loss(head(x_fit), *fit_choices))
            if val_loss < best[0]:
                best = (val_loss, epoch, fit_loss, {k: v.clone() for k, v in head.state_dict().items()})
            elif epoch - best[1] >= PATIENCE:
                break
    head.load_state_dict(best[3])
    return Trained(head.eval(), epoch, best[1], best[2], best[0])


def write_head(path: Path, head: AestheticHead, metadata: Mapping[str, object]) -> None:
    """Write ``head``'s state dict as ``.safetensors`` at ``path`` (atomically), ``metadata``
    as one JSON string under the header's ``winnow`` key (informative: readers ignore it; one
    key, because the header's keys are written in no fixed order)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    atomic_write(Path(path), save(tensors, metadata={"winnow": json.dumps(metadata, sort_keys=True)}))
