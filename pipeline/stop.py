"""A request to stop generating, for this process: set by a signal handler
(``winnow.flows.interrupt``), checked before a shard starts and between its pipeline calls
(where the engine reports progress).

A pipeline call already running finishes; no new one starts. The shard that was stopped
writes no Parquet part, so a later run of the same command redoes it.
"""

from __future__ import annotations

import threading

from winnow.models.errors import WinnowError

_requested = threading.Event()


class Stopped(WinnowError):
    """The shard stopped because a stop was requested (its part is not written)."""


def request() -> None:
    _requested.set()


def clear() -> None:
    _requested.clear()


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Raise ``Stopped`` if a stop was requested."""
    if _requested.is_set():
        raise Stopped("stopped on request; this shard's part is not written")
