"""A pickle payload for the tests that check weights files are read without running code."""

from __future__ import annotations

from pathlib import Path


class Payload:
    """Unpickling this would create ``marker`` (stands in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))
