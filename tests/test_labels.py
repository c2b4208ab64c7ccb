"""A reviewer's decisions as data (``winnow.catalog.labels``): append-only parts, the latest
decision wins, and the catalog readers, stats and export use ``kept_final``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from winnow.catalog.export import export
from winnow.catalog.labels import Decision, LabelError, history, label_parts, latest, write_labels
from winnow.catalog.query import connect, query, read_catalog
from winnow.catalog.schema import Row, candidate_id, table
from winnow.catalog.stats import run_stats
from winnow.catalog.writer import encode_png, image_relpath, part_path, write_image, write_part

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_catalog(root: Path, prompts: list[str], n: int = 4, run_id: str = "r1", keep: int = 1) -> Path:
    """A small catalog written the way a run writes one: ``n`` candidates per prompt with
    distinct solid-colour images, ranked by a ``clip_score`` that falls with the index; the best
    ``keep`` kept, the last candidate of each prompt rejected by a floor."""
    rows = []
    for p, text in enumerate(prompts):
        prompt_id = f"{p:016x}"
        for i in range(n):
            cid = candidate_id(prompt_id, i)
            relpath = image_relpath(run_id, cid)
            pixels = np.full((16, 16, 3), (40 * p % 256, 60 * i % 256, 200), dtype=np.uint8)
            sha = write_image(root, relpath, encode_png(pixels))
            floor = i == n - 1
            rows.append(
                Row(
                    run_id=run_id, source="generated", shard_id="0000", prompt_id=prompt_id,
                    candidate_id=cid, candidate_index=i, prompt=text, negative_prompt="",
                    prompt_meta="{}", config_hash="h", rank=i + 1, kept=i < keep,
                    reject_reason=None if i < keep else ("below_floor:clip_score" if floor else "not_top_k"),
                    image_path=relpath, image_sha256=sha, combined_score=float(n - i),
                    created_at=T0, scores={"clip_score": 0.3 - 0.01 * i},
                )
            )  # fmt: skip
    write_part(part_path(root, run_id, "0000"), table(rows, ["clip_score"]))
    return root


def test_no_labels_kept_final_is_the_policy(tmp_path):
    root = make_catalog(tmp_path, ["a", "b"])
    rows = read_catalog(root)
    assert rows["human_decision"].isna().all()
    assert (rows["kept_final"] == rows["kept"]).all()
    sql = query(root, "SELECT count(*) AS n FROM catalog WHERE kept_final").to_pylist()
    assert sql == [{"n": 2}]


def test_latest_decision_wins_in_both_readers_and_parts_append(tmp_path):
    root = make_catalog(tmp_path, ["a", "b"])
    rows = read_catalog(root)
    first, second = rows.iloc[0], rows.iloc[1]  # prompt a: kept by the policy, then rejected
    d = lambda row, what: Decision(row["run_id"], row["prompt_id"], row["candidate_id"], what)  # noqa: E731
    write_labels(root, [d(first, "reject"), d(second, "keep")], "ann", now=T0)
    write_labels(root, [d(second, "reject")], "bob", now=T0 + timedelta(seconds=1))
    write_labels(root, [d(second, "keep")], "ann", now=T0 + timedelta(seconds=2))
    assert len(label_parts(root)) == 3 and history(root).num_rows == 4
    by_id = read_catalog(root).set_index("candidate_id")
    assert by_id.loc[first["candidate_id"], "human_decision"] == "reject"
    assert not by_id.loc[first["candidate_id"], "kept_final"]
    assert by_id.loc[second["candidate_id"], "kept_final"] and not by_id.loc[second["candidate_id"], "kept"]
    view = query(root, "SELECT candidate_id, human_decision, kept_final FROM catalog").to_pandas()
    view = view.set_index("candidate_id")
    assert view.loc[second["candidate_id"], "human_decision"] == "keep"
    assert (view["kept_final"] == by_id["kept_final"].loc[view.index]).all()
    # a `clear` (an undo) withdraws the decision: the policy's pick stands again
    write_labels(root, [d(first, "clear")], "ann", now=T0 + timedelta(seconds=3))
    assert read_catalog(root).set_index("candidate_id").loc[first["candidate_id"], "kept_final"]
    assert latest(root).num_rows == 2


def test_stats_and_export_use_kept_final(tmp_path):
    root = make_catalog(tmp_path / "cat", ["a", "b"])
    rows = read_catalog(root)
    extra = rows.iloc[1]  # not kept by the policy
    write_labels(root, [Decision(extra["run_id"], extra["prompt_id"], extra["candidate_id"], "keep")], "ann")
    with connect(root) as con:
        stats = run_stats(con).set_index("run_id")
    assert stats.loc["r1", "kept"] == 3
    result = export(root, "imagefolder", tmp_path / "out", kept_only=True)
    assert result.samples == 3


def test_same_instant_gets_distinct_parts_and_bad_decisions_are_refused(tmp_path):
    root = make_catalog(tmp_path, ["a"])
    d = Decision("r1", "0" * 16, candidate_id("0" * 16, 0), "keep")
    paths = {write_labels(root, [d], "ann", now=T0) for _ in range(5)}
    assert len(paths) == 5 and None not in paths
    with pytest.raises(LabelError, match="decision 'maybe'"):
        write_labels(root, [Decision("r1", "0" * 16, "x", "maybe")], "ann")
    assert write_labels(root, [], "ann") is None
    assert len(label_parts(root)) == 5
