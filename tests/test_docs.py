"""The reference docs: every generated section (docs/catalog.md's columns from the row record,
docs/config.md's keys from the config models) is current, the README stays short, and every
relative link in the docs leads somewhere."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from pydantic import BaseModel, Field

from winnow.catalog.schema import COLUMNS, Generation, Row, schema, table
from winnow.docs import GENERATED, DocsError, config_keys, main, markers, stale, with_section

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
DOCS.append(ROOT / "models" / "shapes" / "README.md")


def _section(doc: Path, name: str) -> list[str]:
    begin, end = markers(name)
    return doc.read_text(encoding="utf-8").split(begin)[1].split(end)[0].splitlines()


def test_every_generated_section_is_current() -> None:
    assert stale() == [], "generated docs are out of date: run `python -m winnow.docs` and commit them"


def test_the_column_table_has_one_row_per_column() -> None:
    lines = _section(ROOT / "docs" / "catalog.md", "columns")
    for column in schema(["clip_score"]).names:
        wanted = "`score_<scorer>`" if column.startswith("score_") else f"`{column}`"
        assert sum(line.startswith(f"| {wanted} |") for line in lines) == 1, column


def _dotted(data: dict, prefix: str = "") -> set[str]:
    """The dotted keys of a config mapping, with names the user picks as ``<name>``."""
    keys = set()
    for key, value in data.items():
        name = f"{prefix}{key}"
        keys.add(name)
        if name in ("clip", "select.weights", "select.floors", "select.ceilings"):
            inner = {"<name>": next(iter(value.values()))} if name == "clip" and value else {}
            keys |= _dotted(inner, f"{name}.")
        elif isinstance(value, dict):
            keys |= _dotted(value, f"{name}.")
    return keys


def test_the_config_reference_has_a_row_for_every_key_of_the_shipped_configs() -> None:
    lines = _section(ROOT / "docs" / "config.md", "config")
    rows = [line.split("`")[1] for line in lines if line.startswith("| `")]
    listed = set(rows)
    assert len(listed) == len(rows)  # one row per key
    assert {"prune.at", "run.candidates.until_kept", "runner.retries", "scorers.aesthetic.head"} <= listed
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
        missing = _dotted(data) - listed
        assert not missing, f"{config.name}: {sorted(missing)} not in docs/config.md"


def test_config_keys_give_type_default_and_description() -> None:
    keys = {k.name: k for k in config_keys()}
    steps = keys["generator.steps"]
    assert (steps.type, steps.default) == ("int, ≥ 1, ≤ 1000", "`30`")
    assert keys["prompts.template"].type == "string or [string, …]"
    assert (keys["prune.at"].type, keys["prune.at"].default) == ("float, > 0, < 1", "required")
    assert keys["prune"].default == "unset" and keys["generator.negative_prompt"].default == '`""`'
    assert keys["run.candidates"].type == "int, > 0 or section"
    assert keys["select.normalize"].type == "`zscore` or `rank` or `none`"
    assert keys["scorers.aesthetic.clip"].type == "section (keys as `clip.<name>`)"
    assert "scorers.aesthetic.clip.model" not in keys  # a CLIP's keys are listed once
    assert all(k.description for k in keys.values())


def test_a_key_without_a_description_is_an_error() -> None:
    class Section(BaseModel):
        documented: int = Field(1, description="has one")
        bare: int = 2

    class Top(BaseModel):
        section: Section = Field(description="a section")

    with pytest.raises(DocsError, match=r"section\.bare"):
        list(config_keys(Top))


def test_a_stale_section_is_replaced_and_a_doc_without_markers_is_an_error() -> None:
    begin, end = markers("columns")
    stale_doc = f"intro\n{begin}\n| `seed` | int32 | stale meaning |\n{end}\nafter\n"
    fresh = with_section(stale_doc, "columns", "new table")
    assert fresh == f"intro\n{begin}\nnew table\n{end}\nafter\n"
    with pytest.raises(DocsError, match="markers"):
        with_section("no table here", "columns", "new table")


def test_the_command_rewrites_only_stale_docs_and_check_changes_nothing(tmp_path: Path, capsys) -> None:
    for relative in GENERATED:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    config = tmp_path / "docs" / "config.md"
    begin, end = markers("config")
    text = config.read_text(encoding="utf-8")
    edited = re.sub(re.escape(begin) + ".*?" + re.escape(end), f"{begin}\nold\n{end}", text, flags=re.DOTALL)
    config.write_text(edited, encoding="utf-8")

    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert config.read_text(encoding="utf-8") == edited
    assert "docs/config.md: out of date" in capsys.readouterr().out
    assert main(["--root", str(tmp_path)]) == 0
    assert config.read_text(encoding="utf-8") == text
    assert stale(tmp_path) == []

    config.write_text("no markers\n", encoding="utf-8")
    assert main(["--check", "--root", str(tmp_path)]) == 2
    assert "docs/config.md: no <!-- config:begin -->" in capsys.readouterr().err


def test_the_readme_is_short_and_links_the_references_instead_of_copying_them() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "docs/catalog.md" in readme and "docs/config.md" in readme
    assert "| `candidate_index` |" not in readme and "| `generator.steps` |" not in readme


def _slug(heading: str) -> str:
    """A Markdown heading's anchor as GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_that_exists(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    if doc == ROOT / "README.md":
        assert len(links) >= 10  # the README points at the reference pages
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.relative_to(ROOT)}: {link} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{doc.relative_to(ROOT)}: no heading for {link}"


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
