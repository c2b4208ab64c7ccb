"""Read prompt files: .txt, .csv/.tsv, .jsonl, .parquet -> a list of ``Prompt`` records.

- ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped.
- ``.csv``/``.tsv``/``.jsonl``/``.parquet``: a ``prompt`` column (any case) and optionally a
  ``negative_prompt`` column; every other column travels into the catalog as ``prompt_meta``.
  TSV files are read without quote processing (a ``"`` is part of the prompt), as TSV intends.

Prompt ids are content hashes, so they do not change when a file is reordered or extended.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from winnow.models.errors import WinnowError, first_line

SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".parquet")


class PromptFileError(WinnowError):
    """A prompt file that cannot be read."""


@dataclass(frozen=True)
class Prompt:
    """One prompt to generate candidates for."""

    id: str  # 16 hex chars: hash of text + negative prompt (+ occurrence, for repeats)
    text: str
    negative: str
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able: catalog column prompt_meta

    @property
    def meta_json(self) -> str:
        return json.dumps(self.meta, ensure_ascii=False, sort_keys=True)


def prompt_id(text: str, negative: str) -> str:
    """The content hash of a prompt and its negative prompt: 16 hex characters."""
    return hashlib.blake2b(f"{text}\x1f{negative}".encode(), digest_size=8).hexdigest()


def _table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return pd.DataFrame({"prompt": [s.strip() for s in lines if s.strip() and not s.startswith("#")]})
    if suffix in (".csv", ".tsv"):
        tsv = suffix == ".tsv"
        return pd.read_csv(
            path,
            sep="\t" if tsv else ",",
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        )
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise PromptFileError(f"{path}: unsupported prompt file type {suffix!r} (use {', '.join(SUFFIXES)})")


def _column(df: pd.DataFrame, name: str) -> str | None:
    matches = [c for c in df.columns if str(c).strip().lower() == name]
    return matches[0] if matches else None


def read_prompts(path: str | Path, negative_prompt: str = "", limit: int | None = None) -> list[Prompt]:
    """Read ``path``; ``negative_prompt`` applies where a row has none of its own."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        df = _table(path)
    except PromptFileError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise PromptFileError(
            f"{path}: not a readable {path.suffix} prompt file ({first_line(err)})"
        ) from None
    text_col = _column(df, "prompt")
    if text_col is None:
        raise PromptFileError(f"{path}: no 'prompt' column (columns: {', '.join(map(str, df.columns))})")
    neg_col = _column(df, "negative_prompt")
    meta_cols = [c for c in df.columns if c not in (text_col, neg_col)]
    prompts: list[Prompt] = []
    seen: Counter[str] = Counter()
    for row_no, row in enumerate(df.to_dict("records"), start=1):
        text = row[text_col]
        if not isinstance(text, str) or not text.strip():
            raise PromptFileError(f"{path}: row {row_no} has an empty or non-text prompt")
        negative = row[neg_col] if neg_col and isinstance(row[neg_col], str) and row[neg_col] else None
        negative = negative if negative is not None else negative_prompt
        key = prompt_id(text, negative)
        seen[key] += 1
        if seen[key] > 1:  # the same prompt twice gets candidates twice, under distinct ids
            key = hashlib.blake2b(f"{key}\x1f{seen[key]}".encode(), digest_size=8).hexdigest()
        meta = {str(c): "" if pd.isna(row[c]) else str(row[c]) for c in meta_cols}
        prompts.append(Prompt(key, text.strip(), negative, meta))
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise PromptFileError(f"{path}: no prompts")
    return prompts
