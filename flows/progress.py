"""Progress reporting from shard tasks (worker threads) to whoever shows it (the CLI).

Task inputs stay ids, paths and configs: the reporter is process state, not a task argument.
"""

from __future__ import annotations

from collections.abc import Callable

_listener: Callable[[int, int], None] | None = None


def listen(listener: Callable[[int, int], None] | None) -> None:
    """Route ``report`` calls to ``listener(done, more)`` (None = stop listening)."""
    global _listener
    _listener = listener


def report(done: int, more: int = 0) -> None:
    """``done`` more candidates are generated and scored; ``more`` are newly expected (the
    flow announces its first round, adaptive N's later rounds add to it)."""
    if _listener is not None:
        _listener(done, more)
