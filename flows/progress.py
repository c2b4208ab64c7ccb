"""Progress reporting from shard tasks (worker threads) to whoever shows it (the CLI).

Task inputs stay ids, paths and configs: the reporter is process state, not a task argument.
"""

from __future__ import annotations

from collections.abc import Callable

_listener: Callable[[int], None] | None = None
_sizer: Callable[[int], None] | None = None


def listen(advance: Callable[[int], None] | None, total: Callable[[int], None] | None = None) -> None:
    """Route ``advance``/``expect`` calls to these callbacks (None = stop listening)."""
    global _listener, _sizer
    _listener, _sizer = advance, total


def expect(candidates: int) -> None:
    """Announce the run's total number of candidates."""
    if _sizer is not None:
        _sizer(candidates)


def advance(candidates: int) -> None:
    """Report that ``candidates`` more candidates are done (generated and scored)."""
    if _listener is not None:
        _listener(candidates)
