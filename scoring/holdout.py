"""The held-out report of the commands that learn from a reviewer's labels (``winnow
calibrate``, ``winnow train-head``): one stable split of the labelled prompts, top-1 agreement
with the reviewer and its interval. Both commands use these, so their numbers compare.

The split is by prompt id alone: a prompt's side depends only on its id, the seed and the
held-out share, so every run of a prompt, and every command, puts it on the same side.
A prompt agrees when the candidate ranked first among its labelled candidates is one the
reviewer kept; the 95% interval of the agreement is Wilson's score interval.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Sequence

import numpy as np

from winnow.models.errors import WinnowError

Z95 = 1.959963984540054  # two-sided 95% normal quantile
MIN_PROMPTS = 5  # labelled prompts with a preference needed on each side of the split


class LabelsError(WinnowError):
    """Labels that cannot be learnt from (none, too few prompts with a preference)."""


def unit(key: Hashable, seed: int | str) -> float:
    """A uniform in [0, 1) fixed by ``key`` and ``seed`` (SHA-256 of ``"<seed>:<key>"``)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_mask(prompt_ids: Sequence[Hashable], fraction: float, seed: int) -> np.ndarray:
    """bool per prompt: held out for evaluation (``unit(prompt_id, seed) < fraction``)."""
    return np.array([unit(pid, seed) < fraction for pid in prompt_ids], dtype=bool)


def check_sides(train: int, test: int, skipped: int, holdout: float) -> None:
    """Raise ``LabelsError`` unless both sides of the split have ``MIN_PROMPTS`` prompts with a
    preference (``skipped``: labelled prompts without one, named in the message)."""
    if min(train, test) >= MIN_PROMPTS:
        return
    need = max(MIN_PROMPTS / max(holdout, 1e-9), MIN_PROMPTS / max(1 - holdout, 1e-9))
    raise LabelsError(
        f"{train + test} labelled prompts with a preference ({train} to fit, {test} held out; "
        f"{skipped} skipped: all keep or all reject); needs at least {MIN_PROMPTS} on each side, "
        f"about {int(np.ceil(need))} with --holdout {holdout}"
    )


def top1(prompt: np.ndarray, kept: np.ndarray, utility: np.ndarray) -> tuple[int, int]:
    """(prompts whose highest ``utility`` row was kept, prompts), over rows grouped by
    ``prompt`` (ints ``0..P-1``); ties go to the earlier row, as the policy breaks them."""
    hits, prompts = 0, int(prompt.max()) + 1 if prompt.size else 0
    for p in range(prompts):
        rows = np.flatnonzero(prompt == p)
        hits += bool(kept[rows[np.argmax(utility[rows])]])
    return hits, prompts


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (default 95%) for a proportion ``hits / n``; (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share(hits: int, n: int) -> str:
    """``hits/n = P% (95% Wilson L%–H%)``, the report's form of an agreement."""
    low, high = wilson(hits, n)
    return f"{hits}/{n} = {hits / max(n, 1):.0%} (95% Wilson {low:.0%}–{high:.0%})"
