"""The catalog's row record owns the columns: parts of both sources are built from it, and
docs/catalog.md's column table is generated from it and current."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from winnow.catalog.schema import BEGIN, COLUMNS, END, Generation, Row, schema, table, with_columns

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "catalog.md"


def test_the_committed_column_table_is_current() -> None:
    committed = DOC.read_text(encoding="utf-8")
    assert with_columns(committed) == committed, (
        "docs/catalog.md's column table is out of date: run "
        "`python -m winnow.catalog.schema docs/catalog.md` and commit the result"
    )
    table_lines = committed.split(BEGIN)[1].split(END)[0].splitlines()
    for column in schema(["clip_score"]).names:
        wanted = "`score_<scorer>`" if column.startswith("score_") else f"`{column}`"
        assert sum(line.startswith(f"| {wanted} |") for line in table_lines) == 1, column


def test_a_stale_table_is_replaced_and_a_doc_without_markers_is_an_error() -> None:
    stale = f"intro\n{BEGIN}\n| `seed` | int32 | stale meaning |\n{END}\nafter\n"
    fresh = with_columns(stale)
    assert fresh.startswith("intro\n") and fresh.endswith(f"{END}\nafter\n")
    assert "| `seed` | int64 |" in fresh and "stale meaning" not in fresh
    with pytest.raises(ValueError, match="markers"):
        with_columns("no table here")


def test_the_readme_links_the_columns_instead_of_copying_them() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/catalog.md" in readme
    assert "| `candidate_index` |" not in readme


def test_rows_of_both_sources_build_one_table_with_the_schema_columns_in_order() -> None:
    ids = {"run_id": "r", "shard_id": "00000", "prompt_id": "p", "prompt": "a cat", "negative_prompt": ""}
    generated = Row(
        **ids,
        source="generated",
        candidate_id="p-000",
        candidate_index=0,
        prompt_meta="{}",
        config_hash="h",
        seed=7,
        generation=Generation(model="m", steps=2, width=16, height=16, device="cpu"),
        scores={"clip_score": 30.0},
    )
    external = Row(
        **ids,
        source="external",
        candidate_id="p-001",
        candidate_index=1,
        prompt_meta='{"file": "a.jpg"}',
        config_hash="h",
        generation=Generation(width=20, height=12, device="cpu"),
        scores={"clip_score": 25.0},
    )
    built = table([generated, external], ["clip_score"])
    assert built.schema.names == [c.name for c in COLUMNS] + ["score_clip_score"]
    assert built.schema.field("guidance").type == pa.float32()
    rows = built.to_pylist()
    assert [(r["width"], r["height"], r["model"], r["seed"]) for r in rows] == [
        (16, 16, "m", 7),
        (20, 12, None, None),
    ]
    assert [r["score_clip_score"] for r in rows] == [30.0, 25.0]
    assert rows[1]["versions"] == rows[0]["versions"] and '"torch"' in rows[0]["versions"]
