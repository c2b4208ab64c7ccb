"""Prompt templates: ``{red|green|blue} {cat|dog}`` alternatives and ``__name__`` word lists.

Syntax (the common "dynamic prompts" wildcard syntax, a small subset of it):

- ``{a|b|c}`` picks one alternative; alternatives may be empty (``{|big }``) and may nest
  (``{a {big|small} cat|a dog}``).
- ``__name__`` picks one line of the word list ``<wordlists>/<name>.txt``; ``name`` is
  letters, digits, ``_`` and ``-`` and ends at the next ``__``. Word-list entries are literal
  text (one per line; blank lines and lines starting with ``#`` are skipped).
- ``\\`` makes the next character literal (``\\{``, ``\\|``, ``\\_``, ``\\\\``). A ``|`` outside
  braces is an error (write ``\\|`` for a literal bar).

An expanded prompt has its whitespace runs collapsed to one space and its ends trimmed.
Every combination of choices is one expansion, and expansions are numbered in
``itertools.product`` order (the last choice varies fastest), so a template can be expanded
exhaustively or sampled uniformly over its expansions. Each expansion records which choices
made it (``Choice``), for the catalog's ``prompt_meta``.

Parsing is a small recursive descent over the template text; nothing is evaluated, and a
word-list file path is only ever ``<folder>/<validated name>.txt``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from winnow.models.errors import WinnowError

NAME = re.compile(r"[A-Za-z0-9_-]+")


class TemplateError(WinnowError):
    """A template that cannot be parsed, or names a word list that cannot be read."""


@dataclass(frozen=True)
class Choice:
    """One choice made while expanding: the slot's position in its template (1-based
    character of its ``{`` or first ``_``), the word list's name (None for ``{...}``) and the
    text chosen."""

    at: int
    value: str
    wordlist: str | None = None

    def as_meta(self) -> dict[str, str | int]:
        meta: dict[str, str | int] = {"at": self.at, "value": self.value}
        if self.wordlist is not None:
            meta["list"] = self.wordlist
        return meta


# ``size``: number of expansions (combinations of choices, not distinct texts); cached
# because expanding walks the tree once per expansion.


@dataclass(frozen=True)
class Text:
    value: str
    size = 1


@dataclass(frozen=True)
class Alternatives:
    at: int
    options: tuple[Sequence, ...]

    @cached_property
    def size(self) -> int:
        return sum(o.size for o in self.options)


@dataclass(frozen=True)
class WordList:
    at: int
    name: str
    entries: tuple[str, ...] = ()  # filled by ``resolve``

    @cached_property
    def size(self) -> int:
        if not self.entries:
            raise ValueError(f"word list {self.name!r} is not resolved")
        return len(self.entries)


@dataclass(frozen=True)
class Sequence:
    parts: tuple[Text | Alternatives | WordList, ...]

    @cached_property
    def size(self) -> int:
        total = 1
        for part in self.parts:
            total *= part.size
        return total


Node = Text | Alternatives | WordList | Sequence


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str, at: int) -> TemplateError:
        return TemplateError(f"{what} at character {at + 1} of template {self.text!r}")

    def sequence(self, depth: int) -> Sequence:
        parts: list[Text | Alternatives | WordList] = []
        literal: list[str] = []

        def flush() -> None:
            if literal:
                parts.append(Text("".join(literal)))
                literal.clear()

        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                if self.pos + 1 == len(self.text):
                    raise self.fail("'\\' with nothing after it (write '\\\\' for a backslash)", self.pos)
                literal.append(self.text[self.pos + 1])
                self.pos += 2
            elif char == "{":
                flush()
                parts.append(self.alternatives(depth + 1))
            elif char in "|}":
                if depth == 0:
                    hint = "write {a|b}, or \\| for a literal bar" if char == "|" else "no matching '{'"
                    raise self.fail(f"'{char}' outside braces ({hint})", self.pos)
                break
            elif self.text.startswith("__", self.pos):
                flush()
                parts.append(self.wordlist())
            else:
                literal.append(char)
                self.pos += 1
        flush()
        return Sequence(tuple(parts))

    def alternatives(self, depth: int) -> Alternatives:
        start = self.pos
        self.pos += 1  # the '{'
        options = [self.sequence(depth)]
        while self.pos < len(self.text) and self.text[self.pos] == "|":
            self.pos += 1
            options.append(self.sequence(depth))
        if self.pos == len(self.text):
            raise self.fail("'{' is never closed", start)
        self.pos += 1  # the '}'
        return Alternatives(start + 1, tuple(options))

    def wordlist(self) -> WordList:
        start = self.pos
        end = self.text.find("__", start + 2)
        if end < 0:
            raise self.fail("'__' starts a word-list name that has no closing '__'", start)
        name = self.text[start + 2 : end]
        if not NAME.fullmatch(name):
            raise self.fail(f"word-list name {name!r} is not letters, digits, '_' or '-'", start)
        self.pos = end + 2
        return WordList(start + 1, name)


def parse(template: str) -> Sequence:
    """Parse ``template`` (syntax only; word lists are read by ``resolve``)."""
    return _Parser(template).sequence(0)


def wordlist_names(node: Node) -> list[str]:
    """The word lists ``node`` refers to, in order of first use."""
    if isinstance(node, WordList):
        return [node.name]
    children = node.parts if isinstance(node, Sequence) else getattr(node, "options", ())
    return list(dict.fromkeys(name for child in children for name in wordlist_names(child)))


def read_wordlist(folder: Path | None, name: str) -> tuple[str, ...]:
    """The entries of ``<folder>/<name>.txt`` (``name`` already validated by the parser)."""
    if not NAME.fullmatch(name):  # never build a path from anything else
        raise TemplateError(f"word-list name {name!r} is not letters, digits, '_' or '-'")
    if folder is None:
        raise TemplateError(f"template uses __{name}__ but prompts.wordlists (word-list folder) is not set")
    path = Path(folder) / f"{name}.txt"
    if not path.is_file():
        raise TemplateError(f"unknown word list __{name}__: no file {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateError(f"word list {path} cannot be read ({err})") from None
    entries = tuple(dict.fromkeys(s.strip() for s in lines if s.strip() and not s.startswith("#")))
    if not entries:
        raise TemplateError(f"word list {path} has no entries")
    return entries


def resolve(node: Node, folder: Path | None) -> Node:
    """``node`` with every word list's entries read from ``folder``."""
    cache: dict[str, tuple[str, ...]] = {}

    def walk(n: Node) -> Node:
        if isinstance(n, WordList):
            if n.name not in cache:
                cache[n.name] = read_wordlist(folder, n.name)
            return WordList(n.at, n.name, cache[n.name])
        if isinstance(n, Sequence):
            return Sequence(tuple(walk(p) for p in n.parts))  # type: ignore[misc]
        if isinstance(n, Alternatives):
            return Alternatives(n.at, tuple(walk(o) for o in n.options))  # type: ignore[misc]
        return n

    return walk(node)


def expand(node: Node, index: int) -> tuple[str, tuple[Choice, ...]]:
    """Expansion number ``index`` (0 <= index < ``node.size``): its text and its choices."""
    pieces: list[str] = []
    choices: list[Choice] = []
    _expand(node, index, pieces, choices)
    return " ".join("".join(pieces).split()), tuple(choices)


def _expand(node: Node, index: int, pieces: list[str], choices: list[Choice]) -> None:
    if isinstance(node, Text):
        pieces.append(node.value)
    elif isinstance(node, WordList):
        pieces.append(node.entries[index])
        choices.append(Choice(node.at, node.entries[index], node.name))
    elif isinstance(node, Alternatives):
        for option in node.options:
            if index < option.size:
                mark = len(pieces)
                slot = len(choices)
                _expand(option, index, pieces, choices)
                chosen = " ".join("".join(pieces[mark:]).split())
                choices.insert(slot, Choice(node.at, chosen))
                return
            index -= option.size
        raise IndexError("expansion index out of range")
    else:
        # mixed radix, last part fastest: itertools.product order
        digits: list[int] = []
        for part in reversed(node.parts):
            index, digit = divmod(index, part.size)
            digits.append(digit)
        for part, digit in zip(node.parts, reversed(digits), strict=True):
            _expand(part, digit, pieces, choices)
