"""Fit the policy's scorer weights to a person's keep/reject decisions (``winnow calibrate``).

Pure functions, no I/O. The model is a conditional logit (Bradley–Terry within a prompt): a
candidate's utility is ``sum(w[s] * normalised[s])``, the very combined score of
``winnow.scoring.select`` (same per-prompt normalisation over the prompt's candidates whose
scores are all finite), and each kept candidate of a prompt is modelled as chosen over that
prompt's rejected ones with probability ``exp(u_kept) / (exp(u_kept) + sum exp(u_rejected))``.
A prompt whose labels are all keep or all reject states no preference and is left out. The
negative log-likelihood plus ``l2 / 2 * |w|^2`` is convex; Newton's method with a halving step
minimises it. Because the combined score only ranks, a fitted ``w`` is shown rescaled so that
its largest absolute weight is 1.

Agreement is top-1 on held-out prompts (``winnow.scoring.holdout``, shared with ``winnow
train-head``): a prompt agrees when the candidate the weights rank first among its labelled
candidates is one the person kept.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from winnow.scoring.holdout import LabelsError, top1
from winnow.scoring.select import _group_codes, _normalize


class CalibrateError(LabelsError):
    """Labels or a config that cannot calibrate the weights."""


@dataclass(frozen=True)
class Choices:
    """The labelled prompts with a preference, ready to fit.

    ``features``: (n, d) float64 normalised scores of the labelled candidates with finite
    scores; ``prompt``: (n,) int prompt index in ``0..len(prompt_ids)-1``; ``kept``: (n,) bool,
    the person's decision; ``prompt_ids``: one per prompt; ``skipped``: labelled prompts left
    out because their labels were all keep or all reject; ``index``: (n,) int, each row's
    position in the arrays ``choices`` was given (to fetch other data of the same candidates).
    """

    features: np.ndarray
    prompt: np.ndarray
    kept: np.ndarray
    prompt_ids: list[Hashable]
    skipped: int
    index: np.ndarray

    def subset(self, prompts: np.ndarray) -> Choices:
        """Only the prompts whose index is in ``prompts`` (bool mask over ``prompt_ids``)."""
        rows = prompts[self.prompt]
        new_index = np.cumsum(prompts) - 1
        ids = [p for p, take in zip(self.prompt_ids, prompts, strict=True) if take]
        prompt = new_index[self.prompt[rows]]
        return Choices(self.features[rows], prompt, self.kept[rows], ids, 0, self.index[rows])

    @staticmethod
    def concat(parts: Sequence[Choices]) -> Choices:
        """The prompts of ``parts`` one after another (same feature width; parts without rows
        are left out); ``index`` keeps each part's own positions."""
        parts = [p for p in parts if len(p.prompt_ids)]
        if not parts:
            empty = np.zeros(0, int)
            return Choices(np.zeros((0, 0)), empty, np.zeros(0, bool), [], 0, empty)
        offsets = np.cumsum([0] + [len(p.prompt_ids) for p in parts[:-1]])
        return Choices(
            np.vstack([p.features for p in parts]),
            np.concatenate([p.prompt + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.kept for p in parts]),
            [i for p in parts for i in p.prompt_ids],
            sum(p.skipped for p in parts),
            np.concatenate([p.index for p in parts]),
        )


def choices(
    scores: Mapping[str, np.ndarray],
    groups: Sequence[Hashable] | np.ndarray,
    decision: Sequence[str | None],
    normalize: str,
) -> tuple[list[str], Choices]:
    """The scorer names (sorted, the feature order) and the preference data of ``scores``
    ({scorer: (n,)} of every candidate of the prompts, labelled or not: the normalisation is over
    all of a prompt's finite candidates, as the policy's), ``groups`` (n prompt ids) and
    ``decision`` (n of ``keep``, ``reject`` or None)."""
    names = sorted(scores)
    codes = _group_codes(groups)
    matrix = np.column_stack([np.asarray(scores[s], dtype=np.float64) for s in names])
    valid = np.isfinite(matrix).all(axis=1)
    labelled = np.array([d in ("keep", "reject") for d in decision]) & valid
    keep = np.array([d == "keep" for d in decision])
    first_id = {int(c): g for c, g in zip(codes, list(groups), strict=True)}
    features, prompt, kept, ids, index, skipped = [], [], [], [], [], 0
    for g in np.unique(codes[labelled]):
        rows = np.flatnonzero(valid & (codes == g))
        mine = labelled[rows]
        if keep[rows][mine].all() or not keep[rows][mine].any():
            skipped += 1
            continue
        normalised = np.column_stack([_normalize(matrix[rows, j], normalize) for j in range(len(names))])
        features.append(normalised[mine])
        prompt.append(np.full(int(mine.sum()), len(ids)))
        kept.append(keep[rows][mine])
        index.append(rows[mine])
        ids.append(first_id[int(g)])
    if not ids:
        empty = np.zeros(0, int)
        return names, Choices(np.zeros((0, len(names))), empty, np.zeros(0, bool), [], skipped, empty)
    arrays = np.vstack(features), np.concatenate(prompt), np.concatenate(kept)
    return names, Choices(*arrays, ids, skipped, np.concatenate(index))


def _comparisons(data: Choices) -> list[tuple[int, np.ndarray]]:
    """(kept row, rows it is chosen over: itself first, then its prompt's rejected rows)."""
    out = []
    for p in range(len(data.prompt_ids)):
        rows = np.flatnonzero(data.prompt == p)
        rejected = rows[~data.kept[rows]]
        out += [(int(k), np.r_[k, rejected]) for k in rows[data.kept[rows]]]
    return out


def _objective(w: np.ndarray, data: Choices, pairs, l2: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Penalised negative log-likelihood, its gradient and Hessian at ``w``."""
    d = w.size
    loss, grad, hess = 0.5 * l2 * w @ w, l2 * w, l2 * np.eye(d)
    for _, rows in pairs:
        x = data.features[rows]
        u = x @ w
        m = u.max()
        p = np.exp(u - m)
        total = p.sum()
        p /= total
        loss += m + math.log(total) - u[0]
        mean = p @ x
        grad += mean - x[0]
        hess += (x * p[:, None]).T @ x - np.outer(mean, mean)
    return loss, grad, hess


def fit(data: Choices, l2: float = 0.01, iterations: int = 100) -> np.ndarray:
    """The weights (d,) minimising the penalised conditional-logit loss (module docstring),
    by Newton's method from zero; stops when a step changes the loss by under 1e-10."""
    pairs = _comparisons(data)
    w = np.zeros(data.features.shape[1])
    loss, grad, hess = _objective(w, data, pairs, l2)
    for _ in range(iterations):
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:  # halve until the loss does not rise (the objective is convex)
            new = w - t * step
            new_loss, new_grad, new_hess = _objective(new, data, pairs, l2)
            if new_loss <= loss or t < 1e-8:
                break
            t /= 2
        done = loss - new_loss < 1e-10
        w, loss, grad, hess = new, new_loss, new_grad, new_hess
        if done:
            break
    return w


def readable(weights: np.ndarray, digits: int = 3) -> np.ndarray:
    """``weights`` scaled so the largest absolute one is 1, rounded to ``digits`` decimals
    (the ranking is unchanged by a positive scale)."""
    top = np.abs(weights).max() if weights.size else 0.0
    return np.round(weights / top, digits) if top > 0 else np.zeros_like(weights)


def agreement(data: Choices, weights: np.ndarray) -> tuple[int, int]:
    """(prompts whose top-1 by ``weights`` among labelled candidates was kept, prompts); ties
    go to the earlier row, as the policy breaks them."""
    return top1(data.prompt, data.kept, data.features @ weights)
