"""The selection policy: which candidates of each prompt are kept, and why the others are not.

``select`` is pure (numpy in, numpy out) and deterministic. For each candidate, in order:

1. **Eligibility.** A candidate is rejected with the first failing check, checks in this
   order and scorers in sorted name order within each check:
   ``invalid_score:<scorer>`` (NaN or ±inf), ``below_floor:<scorer>`` (score < floor),
   ``above_ceiling:<scorer>`` (score > ceiling). Bounds are inclusive: a score equal to its
   floor or ceiling passes.
2. **Combined score**, per prompt, over the prompt's candidates whose scores are all finite
   (floor/ceiling failures included, so the scale does not depend on the bounds): every scorer
   is normalised within the prompt, then ``combined = sum(weight[s] * normalised[s])``.

   - ``zscore``: ``(x - mean) / std`` (population std); a scorer constant within the prompt
     contributes 0. Unitless, typically within ±3.
   - ``rank``: average rank (ties share the mean rank), scaled to [0, 1] with 1 = best; a
     single candidate gets 0.5 (the middle, as a constant scorer does).
   - ``none``: the raw scores, in the scorers' own units.

   Candidates with a non-finite score get ``combined = -inf`` (never NaN), so they sort last.
3. **Rank**: 1 = best within the prompt among all its candidates, by combined score
   descending; ties are broken by position (earlier row first), so results are stable.
4. **Kept**: the best ``keep`` eligible candidates of each prompt by that same order. Eligible
   candidates beyond the first ``keep`` get the reason ``not_top_k``.
5. **Near-duplicates** (``dedup``, off by default): walking a prompt's eligible candidates in
   that order, one whose CLIP image embedding has cosine >= ``dedup.cosine`` with a candidate
   already kept (and, with ``dedup.phash``, whose perceptual hash is also within that many
   bits of it) is rejected ``near_duplicate:<candidate_id of that kept one>`` and the next
   one is considered instead, so a prompt keeps ``keep`` pictures that differ.

Normalisation is per prompt because scorers such as CLIP score are only comparable between
images of the same prompt (some prompts are simply easier to match).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from winnow.scoring.base import REGISTRY

INVALID, BELOW, ABOVE, NOT_TOP_K = "invalid_score", "below_floor", "above_ceiling", "not_top_k"
NEAR_DUPLICATE = "near_duplicate"


class Dedup(BaseModel):
    """Within-prompt near-duplicate removal at selection (step 5 of the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cosine: float = Field(
        gt=0,
        le=1,
        description="cosine of two candidates' CLIP image embeddings (the stored one) at or above "
        "which the lower-ranked one is a near-duplicate",
    )
    phash: int | None = Field(
        None,
        ge=0,
        le=64,
        description="also require the two images' 64-bit perceptual hashes (imagehash's pHash; "
        "the dedup extra) to differ in at most this many bits (unset: cosine alone)",
    )

    @model_serializer(mode="wrap")
    def _unset_phash_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Run ids hash the dumped policy: a dedup without phash dumps as it did before phash.
        data = handler(self)
        if data.get("phash", 0) is None:
            del data["phash"]
        return data


class Policy(BaseModel):
    """How to pick the kept candidates of each prompt (see the module docstring).

    ``weights`` gives each scorer's weight in the combined score; a scorer not listed weighs
    its ``default_weight``: 1.0 (so ``{}`` weighs all equally), 0 for safety scorers such as
    ``nsfw`` where higher is worse. 0 excludes a scorer from ranking while its floors and
    ceilings still apply; negative weights rank lower-is-better scorers. ``floors`` and
    ``ceilings`` are inclusive bounds in each scorer's own units.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep: int = Field(default=1, ge=0, description="k: candidates kept per prompt")
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="scorer -> weight in the combined score (unlisted: 1.0, but 0 for the safety "
        "scorers nsfw and nudenet, where higher is worse; 0 = floors and ceilings only; negative = "
        "lower is better)",
    )
    floors: dict[str, float] = Field(
        default_factory=dict, description="scorer -> lowest eligible score, inclusive, in its units"
    )
    ceilings: dict[str, float] = Field(
        default_factory=dict, description="scorer -> highest eligible score, inclusive, in its units"
    )
    normalize: Literal["zscore", "rank", "none"] = Field(
        "zscore", description="how each scorer's scores are made comparable within a prompt"
    )
    dedup: Dedup | None = Field(
        None, description="reject near-duplicates of a kept candidate of the same prompt (off: unset)"
    )

    @model_serializer(mode="wrap")
    def _unset_dedup_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Run ids hash the dumped policy: a policy without dedup dumps as it did before dedup.
        data = handler(self)
        if data.get("dedup", 0) is None:
            del data["dedup"]
        return data

    @model_validator(mode="after")
    def _check_values(self) -> Policy:
        for field in ("weights", "floors", "ceilings"):
            for name, value in getattr(self, field).items():
                if not math.isfinite(value):
                    raise ValueError(f"{field}.{name} must be a finite number, got {value}")
        for name, floor in self.floors.items():
            ceiling = self.ceilings.get(name, math.inf)
            if floor > ceiling:
                raise ValueError(
                    f"floor {floor} of {name!r} is above its ceiling {ceiling}: nothing could pass"
                )
        return self

    def check(self, scorer_names: Iterable[str]) -> None:
        """Raise ``ValueError`` (one line) if the policy names a scorer not in ``scorer_names``."""
        known = sorted(set(scorer_names))
        for field in ("weights", "floors", "ceilings"):
            for name in getattr(self, field):
                if name not in known:
                    raise ValueError(
                        f"policy.{field}: unknown scorer {name!r} (known: {', '.join(known) or 'none'})"
                    )

    def weight(self, name: str) -> float:
        """The weight of scorer ``name``: as listed, else its scorer's ``default_weight`` (1.0
        for a name no scorer has)."""
        if name in self.weights:
            return self.weights[name]
        scorer = REGISTRY.get(name)
        return 1.0 if scorer is None else scorer.default_weight


@dataclass(frozen=True, eq=False)  # arrays have no single truth value for ==
class Selection:
    """The outcome for n candidates, row-aligned with the input.

    ``combined``: float64, the weighted normalised score (-inf for candidates with non-finite
    scores; never NaN). ``rank``: int64, 1 = best in its prompt among all its candidates.
    ``kept``: bool. ``reason``: ``None`` for kept candidates, else why not (e.g.
    ``"below_floor:aesthetic"``, ``"not_top_k"``).
    """

    combined: np.ndarray
    rank: np.ndarray
    kept: np.ndarray
    reason: list[str | None]

    @property
    def eligible(self) -> np.ndarray:
        """bool (n,): passed every check (kept, or rejected only for ``not_top_k``); a
        near-duplicate is not eligible (adaptive N makes more candidates for its prompt)."""
        return np.array([r is None or r == NOT_TOP_K for r in self.reason], dtype=bool)


def _group_codes(groups: Sequence[Hashable] | np.ndarray) -> np.ndarray:
    """Dense int codes in order of first appearance (works for any hashable group key)."""
    codes: dict[Hashable, int] = {}
    return np.array([codes.setdefault(g, len(codes)) for g in list(groups)], dtype=np.int64)


def _normalize(x: np.ndarray, how: str) -> np.ndarray:
    """Normalise one scorer's finite scores within one prompt (see module docstring)."""
    m = x.size
    if how == "none":
        return x
    if how == "rank":
        if m == 1:
            return np.full(1, 0.5)
        order = np.argsort(x, kind="stable")
        sorted_x = x[order]
        # Average rank per run of equal values: (first + last) / 2, 0-based.
        starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]
        ends = np.r_[starts[1:], m] - 1
        run = np.repeat(np.arange(starts.size), ends - starts + 1)
        ranks = np.empty(m)
        ranks[order] = ((starts + ends) / 2.0)[run]
        return ranks / (m - 1)
    # zscore. Shift by the minimum and scale by the range first: if adding a constant to a
    # scorer leaves these differences unchanged (it does whenever the subtraction is exact),
    # the z-scores are bit-identical, so ties and their tie-breaks do not move; scaling keeps
    # the squares from overflowing. fsum makes the statistics independent of row order.
    d = x - x.min()
    span = d.max()
    if span == 0 or not math.isfinite(span):
        return np.zeros(m)
    u = d / span
    mean = math.fsum(u) / m
    std = math.sqrt(math.fsum((u - mean) ** 2) / m)
    return (u - mean) / std if std > 0 else np.zeros(m)


def select(
    scores: Mapping[str, np.ndarray],
    groups: Sequence[Hashable] | np.ndarray,
    policy: Policy,
    embeddings: np.ndarray | None = None,
    ids: Sequence[str] | None = None,
    hashes: np.ndarray | None = None,
) -> Selection:
    """Apply ``policy`` to ``scores`` ({scorer: (n,) higher-is-better}) of candidates grouped
    by prompt (``groups``: n hashable keys, e.g. prompt ids). See the module docstring.
    ``policy.dedup`` needs ``embeddings`` ((n, d) L2-normalised) and ``ids`` (n candidate ids,
    named in the reasons); ``policy.dedup.phash`` also needs ``hashes`` ((n, 64) bool: each
    image's perceptual hash bits, ``winnow.scoring.phash``)."""
    if policy.dedup is not None and (embeddings is None or ids is None):
        raise ValueError("select.dedup needs the candidates' embeddings and ids")
    if policy.dedup is not None and policy.dedup.phash is not None and hashes is None:
        raise ValueError("select.dedup.phash needs the candidates' perceptual hashes")
    names = sorted(scores)
    policy.check(names)
    codes = _group_codes(groups)
    n = codes.size
    matrix = np.empty((n, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        column = np.asarray(scores[name], dtype=np.float64)
        if column.shape != (n,):
            raise ValueError(f"scores[{name!r}] has shape {column.shape}, expected ({n},)")
        matrix[:, j] = column

    # 1. eligibility: the first failing check, in the documented order.
    finite = np.isfinite(matrix)
    reason = np.full(n, None, dtype=object)
    checks: list[tuple[str, np.ndarray]] = []
    for j, name in enumerate(names):
        checks.append((f"{INVALID}:{name}", ~finite[:, j]))
    with np.errstate(invalid="ignore"):  # NaN comparisons are False; such rows failed above
        for j, name in enumerate(names):
            if name in policy.floors:
                checks.append((f"{BELOW}:{name}", matrix[:, j] < policy.floors[name]))
        for j, name in enumerate(names):
            if name in policy.ceilings:
                checks.append((f"{ABOVE}:{name}", matrix[:, j] > policy.ceilings[name]))
    for label, failed in checks:
        reason[failed & (reason == None)] = label  # noqa: E711 - elementwise on an object array
    eligible = reason == None  # noqa: E711

    # 2. combined score per prompt, over rows with all scores finite.
    valid = finite.all(axis=1)
    combined = np.full(n, -np.inf)
    weights = np.array([policy.weight(name) for name in names])
    for g in np.unique(codes[valid]):
        rows = np.flatnonzero(valid & (codes == g))
        total = np.zeros(rows.size)
        for j in range(len(names)):
            if weights[j] != 0:
                total += weights[j] * _normalize(matrix[rows, j], policy.normalize)
        combined[rows] = total
    # Only "none" with scores near the float limit can overflow into inf - inf = NaN.
    combined[np.isnan(combined)] = -np.inf

    # 3. rank among all candidates of a prompt; 4. keep the first `keep` eligible ones.
    order = np.lexsort((np.arange(n), -combined, codes))
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start + 1
    if policy.dedup is not None:
        _near_duplicates(order, codes, eligible, reason, embeddings, ids, hashes, policy)
    eligible_sorted = eligible[order].astype(np.int64)
    cum = np.cumsum(eligible_sorted)
    before_group = np.r_[0, cum][group_start]  # eligible rows in earlier groups
    kept_sorted = (eligible_sorted == 1) & (cum - before_group <= policy.keep)
    kept = np.zeros(n, dtype=bool)
    kept[order] = kept_sorted
    reason[eligible & ~kept] = NOT_TOP_K
    return Selection(combined=combined, rank=rank, kept=kept, reason=list(reason))


def _near_duplicates(
    order: np.ndarray,
    codes: np.ndarray,
    eligible: np.ndarray,
    reason: np.ndarray,
    embeddings: np.ndarray | None,
    ids: Sequence[str] | None,
    hashes: np.ndarray | None,
    policy: Policy,
) -> None:
    """Step 5, in place: walk each prompt's eligible candidates best first; one too close to a
    candidate that will be kept becomes ineligible with ``near_duplicate:<that id>``."""
    assert policy.dedup is not None and embeddings is not None and ids is not None
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.shape[0] != codes.size:
        raise ValueError(f"embeddings has {vectors.shape[0]} rows, expected {codes.size}")
    bits = None if policy.dedup.phash is None else np.asarray(hashes, dtype=bool)
    if bits is not None and bits.shape[0] != codes.size:
        raise ValueError(f"hashes has {bits.shape[0]} rows, expected {codes.size}")
    kept: dict[int, list[int]] = {}  # prompt code -> rows kept so far
    for i in order:
        if not eligible[i]:
            continue
        mine = kept.setdefault(int(codes[i]), [])
        if len(mine) >= policy.keep:
            continue  # not_top_k: never compared, nothing of it is kept
        similar = vectors[mine] @ vectors[i] if mine else np.zeros(0)
        near = similar >= policy.dedup.cosine
        if bits is not None and mine:  # and within policy.dedup.phash bits (Hamming distance)
            near &= (bits[mine] != bits[i]).sum(axis=1) <= policy.dedup.phash
        close = np.flatnonzero(near)
        if close.size:
            eligible[i] = False
            reason[i] = f"{NEAR_DUPLICATE}:{ids[mine[close[np.argmax(similar[close])]]]}"
        else:
            mine.append(int(i))
