"""The generated sections of winnow's reference docs, and the one command that regenerates them.

A generated section sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a
Markdown file; the text around it is written by hand. ``GENERATED`` lists every section and the
function that renders it: ``docs/catalog.md``'s column table from the catalog's row record
(``winnow.catalog.schema``) and ``docs/config.md``'s key table from the config's pydantic
models (every key: dotted name, type, default, description).

``python -m winnow.docs`` rewrites every stale section; ``python -m winnow.docs --check``
changes nothing and exits 1 naming the stale files (tests/test_docs.py fails on a stale doc).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from winnow.catalog.schema import columns_markdown
from winnow.models.errors import WinnowError
from winnow.pipeline.config import Config
from winnow.scoring.base import REGISTRY, ScorerParams

ROOT = Path(__file__).resolve().parent.parent  # the repository (docs/ is not installed)


class DocsError(WinnowError):
    """A doc that lacks the markers of a section generated into it, or a config key without a
    description."""


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of generated section ``name``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def with_section(doc: str, name: str, content: str) -> str:
    """``doc`` with the text between section ``name``'s markers replaced by ``content``."""
    begin, end = markers(name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(doc):
        raise DocsError(f"no {begin} ... {end} markers")
    return pattern.sub(lambda _: f"{begin}\n{content}\n{end}", doc, count=1)


@dataclass(frozen=True)
class Key:
    """One config key as the reference lists it: type and default as Markdown, the description
    as its Field gives it (``config_markdown`` escapes it)."""

    name: str  # dotted, e.g. generator.steps; <name> stands for a name the user picks
    type: str
    default: str
    description: str


def config_keys(
    model: type[BaseModel] = Config, prefix: str = "", listed: dict[type, str] | None = None
) -> Iterator[Key]:
    """Every key of ``model`` and of its sections, depth first, in declaration order. A
    scorer's keys are listed under each registered scorer's name (``scorers.aesthetic.head``).
    A section model's keys are listed once, where it first occurs (``listed``: model -> where);
    later keys of that model refer there (a scorer's ``clip`` to ``clip.<name>``)."""
    listed = {} if listed is None else listed
    for field_name, info in model.model_fields.items():
        name = prefix + field_name
        if not info.description:
            raise DocsError(f"config key {name} ({model.__name__}.{field_name}) has no description")
        sections = [s for s in _sections(info.annotation) if s not in listed]
        type_ = _type(info.annotation, info.metadata)
        for section in _sections(info.annotation):
            if section in listed:
                type_ = type_.replace("section", f"section (keys as `{listed[section]}`)")
        yield Key(name, type_, _default(info), info.description)
        values = _mapping_values(info.annotation)
        if values is not None and issubclass(values, ScorerParams):
            for scorer in sorted(REGISTRY):
                cls = REGISTRY[scorer]
                yield Key(f"{name}.{scorer}", "section", "unset", _summary(cls))
                yield from config_keys(cls.Params, f"{name}.{scorer}.", listed)
        elif values is not None:
            listed.setdefault(values, f"{name}.<name>")
            yield Key(f"{name}.<name>", "section", "unset", _summary(values))
            yield from config_keys(values, f"{name}.<name>.", listed)
        for section in sections:
            listed[section] = name
            yield from config_keys(section, f"{name}.", listed)


def config_markdown() -> str:
    """The config reference as a Markdown table (key | type | default | meaning)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key in config_keys():
        cells = (f"`{key.name}`", key.type, key.default, _markdown(key.description))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def _summary(cls: type) -> str:
    """The first paragraph of a class's docstring, on one line."""
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def _markdown(text: str) -> str:
    """A description as Markdown: reStructuredText's double backticks become single ones, and
    outside code spans ``<name>`` and ``__name__`` stay literal (not an HTML tag, not bold)."""
    spans = text.replace("``", "`").split("`")
    for i in range(0, len(spans), 2):  # the even pieces are outside code spans
        spans[i] = spans[i].replace("<", "&lt;").replace("__", "\\_\\_").replace("*", "\\*")
    return "`".join(spans)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, ...]`` -> (T, its metadata); anything else -> (it, [])."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        inner, more = _unwrap(inner)
        return inner, [*metadata, *more]
    return annotation, []


def _members(annotation: Any) -> list[Any]:
    """The members of a union other than ``None`` (a non-union is its only member)."""
    annotation, _ = _unwrap(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for m in typing.get_args(annotation) if m is not type(None)]
    return [annotation]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a key may hold (its sub-keys)."""
    return [m for m in map(lambda m: _unwrap(m)[0], _members(annotation)) if _is_section(m)]


def _mapping_values(annotation: Any) -> type[BaseModel] | None:
    """For ``dict[str, Model]``, ``Model`` (its keys are listed under ``<name>``); else None."""
    annotation, _ = _unwrap(annotation)
    if typing.get_origin(annotation) is dict:
        values, _ = _unwrap(typing.get_args(annotation)[1])
        return values if _is_section(values) else None
    return None


_NAMES = {int: "int", float: "float", bool: "bool", str: "string", Path: "path"}
_BOUNDS = {
    annotated_types.Ge: ("≥", "ge"),
    annotated_types.Gt: (">", "gt"),
    annotated_types.Le: ("≤", "le"),
    annotated_types.Lt: ("<", "lt"),
    annotated_types.MultipleOf: ("multiple of", "multiple_of"),
}


def _type(annotation: Any, metadata: list[Any] = ()) -> str:
    """A key's type in words, with its bounds: ``int ≥ 1``, ``int > 0 or section``."""
    return " or ".join(_one_type(member, list(metadata)) for member in _members(annotation))


def _one_type(annotation: Any, metadata: list[Any]) -> str:
    annotation, more = _unwrap(annotation)
    if _is_section(annotation):
        return "section"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"[{_type(args[0])}, …]"
    if origin is dict:
        return f"{{name: {_type(args[1])}}}"
    bounds = [
        f"{word} {getattr(m, attr)}"
        for m in [*metadata, *more]
        for kind, (word, attr) in _BOUNDS.items()
        if isinstance(m, kind)
    ]
    bounds += [f"matching `{m.pattern}`" for m in [*metadata, *more] if getattr(m, "pattern", None)]
    name = _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return ", ".join([name, *bounds])


def _default(info: FieldInfo) -> str:
    """A key's default as the reference shows it: ``required``, ``unset``, or the value."""
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default is PydanticUndefined else info.default
    if isinstance(value, BaseModel):
        return "(its keys' defaults)"
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{json.dumps(value)}`" if isinstance(value, bool | dict | list) or value == "" else f"`{value}`"


# Every generated section: the doc (relative to the repository) -> section name -> renderer.
GENERATED: dict[str, dict[str, Callable[[], str]]] = {
    "docs/catalog.md": {"columns": columns_markdown},
    "docs/config.md": {"config": config_markdown},
}


def regenerated(doc: str, sections: dict[str, Callable[[], str]]) -> str:
    """``doc`` with every one of ``sections`` rendered afresh."""
    for name, render in sections.items():
        doc = with_section(doc, name, render())
    return doc


def stale(root: Path = ROOT, write: bool = False) -> list[str]:
    """The docs under ``root`` whose generated sections are not current; ``write`` rewrites them."""
    found = []
    for relative, sections in GENERATED.items():
        path = root / relative
        committed = path.read_text(encoding="utf-8")
        try:
            fresh = regenerated(committed, sections)
        except DocsError as err:
            raise DocsError(f"{relative}: {err}") from None
        if fresh != committed:
            found.append(relative)
            if write:
                path.write_text(fresh, encoding="utf-8")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m winnow.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    try:
        found = stale(args.root, write=not args.check)
    except (DocsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for relative in found:
        print(f"{relative}: {'out of date' if args.check else 'regenerated'}")
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
