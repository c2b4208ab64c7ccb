"""The selection policy: examples for every rule and reason, and hypothesis properties."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from winnow.scoring.select import Policy, Selection, select

# ---------------------------------------------------------------------------- examples


def test_keeps_best_k_per_prompt_with_ranks() -> None:
    scores = {"a": np.array([1.0, 3.0, 2.0, 10.0, 0.0])}
    out = select(scores, ["p", "p", "p", "q", "q"], Policy(keep=2))
    assert out.kept.tolist() == [False, True, True, True, True]
    assert out.rank.tolist() == [3, 1, 2, 1, 2]
    assert out.reason == ["not_top_k", None, None, None, None]
    assert out.combined.dtype == np.float64 and out.rank.dtype == np.int64
    assert out.kept.dtype == np.bool_


def test_zscore_values_and_constant_scorer_contributes_zero() -> None:
    scores = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([5.0, 5.0, 5.0])}
    out = select(scores, [0, 0, 0], Policy(keep=1))
    np.testing.assert_allclose(out.combined, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])


def test_rank_normalisation_averages_ties_and_scales_to_unit_interval() -> None:
    scores = {"a": np.array([10.0, 20.0, 20.0, 30.0])}
    out = select(scores, [0] * 4, Policy(normalize="rank"))
    # 0-based average ranks 0, 1.5, 1.5, 3 over (m - 1) = 3
    np.testing.assert_allclose(out.combined, [0.0, 0.5, 0.5, 1.0])
    single = select({"a": np.array([7.0])}, ["x"], Policy(normalize="rank"))
    assert single.combined.tolist() == [0.5]


def test_weights_default_to_one_and_none_uses_raw_units() -> None:
    scores = {"a": np.array([1.0, 2.0]), "b": np.array([10.0, 0.0])}
    out = select(scores, [0, 0], Policy(normalize="none"))
    assert out.combined.tolist() == [11.0, 2.0]
    out = select(scores, [0, 0], Policy(normalize="none", weights={"b": 0.0}))
    assert out.combined.tolist() == [1.0, 2.0] and out.kept.tolist() == [False, True]
    out = select(scores, [0, 0], Policy(normalize="none", weights={"a": 2.0, "b": -1.0}))
    assert out.combined.tolist() == [-8.0, 4.0]


def test_ties_are_broken_by_position() -> None:
    out = select({"a": np.array([1.0, 2.0, 2.0, 2.0])}, [0] * 4, Policy(keep=2))
    assert out.kept.tolist() == [False, True, True, False]
    assert out.rank.tolist() == [4, 1, 2, 3]


def test_invalid_score_reason_and_minus_inf_combined() -> None:
    scores = {"b": np.array([1.0, np.nan, 3.0, 2.0]), "a": np.array([1.0, 1.0, np.inf, 2.0])}
    out = select(scores, [0] * 4, Policy(keep=4))
    # Scorers are checked in sorted name order: row 2 fails on "a" before "b" is looked at.
    assert out.reason == [None, "invalid_score:b", "invalid_score:a", None]
    assert out.combined[1] == -np.inf and out.combined[2] == -np.inf
    assert not np.isnan(out.combined).any()
    # finite rows are normalised among themselves only
    np.testing.assert_allclose(out.combined[[0, 3]], [-2.0, 2.0])
    assert out.rank.tolist() == [2, 3, 4, 1]


def test_below_floor_and_above_ceiling_reasons_in_fixed_order() -> None:
    scores = {"aesthetic": np.array([5.0, 3.0, 9.0, 3.0]), "clip_score": np.array([30, 30, 30, 50.0])}
    policy = Policy(keep=4, floors={"aesthetic": 4.0}, ceilings={"aesthetic": 8.0, "clip_score": 40.0})
    out = select(scores, [0] * 4, policy)
    # Row 3 is below the aesthetic floor and above the clip ceiling: floors come first.
    assert out.reason == [None, "below_floor:aesthetic", "above_ceiling:aesthetic", "below_floor:aesthetic"]
    # bounds are inclusive
    edge = select({"a": np.array([4.0, 8.0])}, [0, 0], Policy(keep=2, floors={"a": 4}, ceilings={"a": 8}))
    assert edge.kept.tolist() == [True, True]


def test_rejected_by_floor_is_still_ranked_but_not_kept() -> None:
    scores = {"a": np.array([9.0, 5.0, 1.0])}
    out = select(scores, [0] * 3, Policy(keep=1, floors={"a": 9.5}))
    assert out.kept.tolist() == [False, False, False]
    out = select(scores, [0] * 3, Policy(keep=1, ceilings={"a": 8.0}))
    assert out.rank.tolist() == [1, 2, 3]
    assert out.kept.tolist() == [False, True, False]
    assert out.reason == ["above_ceiling:a", None, "not_top_k"]


def test_keep_zero_and_no_scorers() -> None:
    out = select({"a": np.array([1.0, 2.0])}, [0, 0], Policy(keep=0))
    assert out.reason == ["not_top_k", "not_top_k"]
    out = select({}, ["p", "p", "q"], Policy(keep=1))
    assert out.kept.tolist() == [True, False, True] and out.combined.tolist() == [0.0] * 3
    empty = select({"a": np.array([])}, [], Policy())
    assert empty.kept.shape == (0,) and empty.reason == []


def test_groups_may_be_any_hashable_in_any_order() -> None:
    scores = {"a": np.array([1.0, 5.0, 2.0, 4.0])}
    out = select(scores, np.array(["x", "y", "x", "y"]), Policy())
    assert out.kept.tolist() == [False, True, True, False]
    out = select(scores, [("p", 1), None, ("p", 1), None], Policy())
    assert out.kept.tolist() == [False, True, True, False]


def test_policy_validation() -> None:
    with pytest.raises(ValidationError):
        Policy(keep=-1)
    with pytest.raises(ValidationError, match="extra"):
        Policy(top_k=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="nothing could pass"):
        Policy(floors={"a": 5}, ceilings={"a": 4})
    with pytest.raises(ValidationError, match="finite"):
        Policy(weights={"a": math.nan})
    policy = Policy(floors={"aesthetc": 5.0})
    with pytest.raises(
        ValueError, match=r"policy.floors: unknown scorer 'aesthetc' \(known: aesthetic, clip_sc"
    ):
        policy.check(["clip_score", "aesthetic"])
    with pytest.raises(ValueError, match="unknown scorer 'aesthetc'"):
        select({"aesthetic": np.zeros(2)}, [0, 0], policy)
    Policy(weights={"a": 2}, ceilings={"a": 1}).check(["a"])  # known names pass


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"scores\['a'\] has shape \(3,\), expected \(2,\)"):
        select({"a": np.zeros(3)}, [0, 0], Policy())


# -------------------------------------------------------------------------- properties

Case = tuple[dict[str, np.ndarray], list[int], Policy]
NAMES = ("a", "b", "c")
# Small integers (as floats) make "add a constant" exact; special values exercise the checks.
VALUES = st.one_of(
    st.integers(-20, 20).map(float),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.floats(-100, 100, allow_nan=False),
)


@st.composite
def cases(draw: st.DrawFn, integer: bool = False) -> Case:
    n = draw(st.integers(0, 14))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    values = st.integers(-20, 20).map(float) if integer else VALUES
    scores = {name: np.array(draw(st.lists(values, min_size=n, max_size=n))) for name in names}
    groups = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    bound = st.integers(-15, 15).map(float)
    floors = draw(st.dictionaries(st.sampled_from(names), bound, max_size=2))
    ceilings = {
        k: v + draw(st.integers(0, 20))
        for k, v in draw(st.dictionaries(st.sampled_from(names), bound, max_size=2)).items()
    }
    ceilings = {k: max(v, floors.get(k, v)) for k, v in ceilings.items()}
    policy = Policy(
        keep=draw(st.integers(0, 4)),
        weights=draw(st.dictionaries(st.sampled_from(names), st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0]))),
        floors=floors,
        ceilings=ceilings,
        normalize=draw(st.sampled_from(["zscore", "rank", "none"])),
    )
    return scores, groups, policy


def expected_reason(scores: dict[str, np.ndarray], i: int, policy: Policy) -> str | None:
    """The eligibility rule, restated independently of the implementation."""
    names = sorted(scores)
    for s in names:
        if not math.isfinite(scores[s][i]):
            return f"invalid_score:{s}"
    for s in names:
        if s in policy.floors and scores[s][i] < policy.floors[s]:
            return f"below_floor:{s}"
    for s in names:
        if s in policy.ceilings and scores[s][i] > policy.ceilings[s]:
            return f"above_ceiling:{s}"
    return None


def by_group(groups: list[int]) -> dict[int, np.ndarray]:
    g = np.array(groups, dtype=np.int64)
    return {key: np.flatnonzero(g == key) for key in set(groups)}


@settings(max_examples=150, deadline=None)
@given(cases())
def test_core_invariants(case: Case) -> None:
    scores, groups, policy = case
    out = select(scores, groups, policy)
    n = len(groups)
    assert isinstance(out, Selection)
    assert out.combined.shape == out.rank.shape == out.kept.shape == (n,) and len(out.reason) == n
    assert not np.isnan(out.combined).any()
    eligible = np.array([expected_reason(scores, i, policy) is None for i in range(n)], dtype=bool)
    np.testing.assert_array_equal(out.eligible, eligible)
    assert not (out.kept & ~eligible).any()  # kept ⊆ eligible
    for i in range(n):
        expected = None if out.kept[i] else (expected_reason(scores, i, policy) or "not_top_k")
        assert out.reason[i] == expected  # reason set iff not kept
        if any(not math.isfinite(v[i]) for v in scores.values()):
            assert out.combined[i] == -np.inf
    for rows in by_group(groups).values():
        assert out.kept[rows].sum() == min(policy.keep, eligible[rows].sum())
        assert sorted(out.rank[rows].tolist()) == list(range(1, rows.size + 1))
        kept, passed_over = rows[out.kept[rows]], rows[eligible[rows] & ~out.kept[rows]]
        if kept.size and passed_over.size:
            assert out.combined[kept].min() >= out.combined[passed_over].max()
        # rank order agrees with combined (descending)
        ordered = rows[np.argsort(out.rank[rows])]
        assert (out.combined[ordered][:-1] >= out.combined[ordered][1:]).all()


@settings(max_examples=75, deadline=None)
@given(cases(), st.randoms(use_true_random=False))
def test_permuting_rows_keeps_the_same_candidates(case: Case, rnd: random.Random) -> None:
    scores, groups, policy = case
    n = len(groups)
    perm = list(range(n))
    rnd.shuffle(perm)
    perm_arr = np.array(perm, dtype=np.int64)
    out = select(scores, groups, policy)
    shuffled = select({k: v[perm_arr] for k, v in scores.items()}, [groups[p] for p in perm], policy)
    # Combined scores are order-independent exactly (the statistics use fsum).
    np.testing.assert_array_equal(shuffled.combined, out.combined[perm_arr])
    for rows in by_group(groups).values():
        # Identity of kept rows is fixed except among rows tied on combined (broken by position).
        values = out.combined[rows]
        unique = [r for r, v in zip(rows, values, strict=True) if (values == v).sum() == 1]
        inverse = np.argsort(perm_arr)
        for r in unique:
            assert shuffled.kept[inverse[r]] == out.kept[r]
        kept_values = sorted(out.combined[rows][out.kept[rows]].tolist())
        rows_after = inverse[rows]
        assert sorted(shuffled.combined[rows_after][shuffled.kept[rows_after]].tolist()) == kept_values


@settings(max_examples=75, deadline=None)
@given(cases(integer=True), st.sampled_from(NAMES), st.integers(-1000, 1000))
def test_adding_a_constant_to_a_scorer_keeps_the_same_set(case: Case, name: str, constant: int) -> None:
    scores, groups, policy = case
    if name not in scores or policy.normalize == "none":
        return
    # Bounds move with the scores so eligibility is unchanged; ranking must not change at all.
    moved = policy.model_copy(
        update={
            "floors": {k: v + constant * (k == name) for k, v in policy.floors.items()},
            "ceilings": {k: v + constant * (k == name) for k, v in policy.ceilings.items()},
        }
    )
    shifted = dict(scores, **{name: scores[name] + constant})
    a, b = select(scores, groups, policy), select(shifted, groups, moved)
    np.testing.assert_array_equal(a.kept, b.kept)
    np.testing.assert_array_equal(a.rank, b.rank)


@settings(max_examples=75, deadline=None)
@given(cases(), st.sampled_from(NAMES), st.integers(0, 30))
def test_raising_a_floor_never_adds_eligible_or_kept(case: Case, name: str, raise_by: int) -> None:
    scores, groups, policy = case
    if name not in scores:
        return
    old = policy.floors.get(name, -50.0)
    floors = dict(policy.floors, **{name: old + raise_by})
    ceilings = {k: max(v, floors.get(k, v)) for k, v in policy.ceilings.items()}
    raised = policy.model_copy(update={"floors": floors, "ceilings": ceilings})
    before, after = select(scores, groups, policy), select(scores, groups, raised)
    if ceilings != policy.ceilings:
        return  # the ceiling had to move too; not a pure floor change
    assert not (after.eligible & ~before.eligible).any()
    for rows in by_group(groups).values():
        assert after.kept[rows].sum() <= before.kept[rows].sum()
        if policy.keep >= rows.size:  # "keep everything that passes": kept sets shrink
            assert not (after.kept[rows] & ~before.kept[rows]).any()
    # Not "kept never grows" in general: with top-k, a runner-up is promoted when the leader
    # falls below the raised floor. Bounds do not touch the combined scores.
    np.testing.assert_array_equal(after.combined, before.combined)


@settings(max_examples=75, deadline=None)
@given(cases(), st.integers(0, 3), st.data())
def test_prompts_are_isolated(case: Case, victim: int, data: st.DataObject) -> None:
    scores, groups, policy = case
    rows = np.flatnonzero(np.array(groups, dtype=np.int64) == victim)
    changed = {k: v.copy() for k, v in scores.items()}
    for k in changed:
        changed[k][rows] = data.draw(st.lists(VALUES, min_size=rows.size, max_size=rows.size))
    a, b = select(scores, groups, policy), select(changed, groups, policy)
    others = np.setdiff1d(np.arange(len(groups)), rows)
    np.testing.assert_array_equal(a.combined[others], b.combined[others])
    np.testing.assert_array_equal(a.rank[others], b.rank[others])
    np.testing.assert_array_equal(a.kept[others], b.kept[others])
    assert [a.reason[i] for i in others] == [b.reason[i] for i in others]
