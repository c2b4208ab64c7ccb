"""Ctrl-C, SIGTERM and SIGHUP end a run cleanly: generation stops, finished shards stay.

The first signal requests a stop (``winnow.pipeline.stop``): the pipeline call running
finishes, no new one starts, shards not started are cancelled, and the flow raises
``RunInterrupted`` once every shard has settled, which Prefect records as a crashed flow run.
A second signal exits at once (exit status 128 + signal number, as a shell reports it).

Prefect's temporary server (started when no ``PREFECT_API_URL`` is set) would be stopped by
a terminal's Ctrl-C, which signals the whole foreground process group, before the run could
record that it stopped; every later Prefect call would then fail loudly. It is started here in
a process group of its own instead, and still ends with this process (Prefect stops it at
exit; on Linux the kernel also stops it when this process dies).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from winnow.catalog.writer import part_path
from winnow.models.errors import WinnowError, first_line
from winnow.pipeline import stop

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

    from winnow.pipeline.shard import ShardPlan

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL = 0.2  # seconds between checks for a stop request while waiting for shards

_received: list[int] = []  # signals received since the outermost `handling()` began
_depth = 0
_server = None  # the temporary Prefect server this process started, if any


class RunInterrupted(BaseException):
    """The run stopped at a signal. The message says how many shards are written, where.

    A BaseException, like KeyboardInterrupt: Prefect records the flow run as crashed, and no
    ``except Exception`` on the way out takes it for an error."""


class PrefectServerError(WinnowError):
    """Prefect's temporary server did not start."""


def exit_status() -> int:
    """128 + the first signal received (130 for SIGINT, 143 for SIGTERM); 130 if none was."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def _handle(signum: int, frame: object) -> None:
    _received.append(signum)
    if len(_received) == 1:
        stop.request()
        return
    # A second signal: the user does not want to wait for the running pipeline call.
    if _server is not None and _server.server_process is not None:
        _server.server_process.kill()
    if sys.stderr.isatty():
        sys.stderr.write("\x1b[?25h\n")  # the progress bar hid the cursor
    os._exit(128 + signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Route SIGINT, SIGTERM and SIGHUP to the stop request while the block runs (in the main
    thread; elsewhere signals cannot be handled and nothing changes). Nested blocks share the
    outermost one's state; the outermost starts with no stop requested.

    Inside a Prefect flow this replaces Prefect's own SIGTERM handler for the block: that one
    raises in the flow's thread at once, without stopping the shards running in other threads.
    """
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _received.clear()
        stop.clear()
    previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def until_done(futures: Sequence[PrefectFuture], on_stop: Callable[[], None]) -> Iterator[PrefectFuture]:
    """Yield each of ``futures`` as it finishes. When a stop is requested, call ``on_stop``
    once (it cancels the shards not started) and go on until every future has settled."""
    finished: queue.SimpleQueue[PrefectFuture] = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    left, stopping = len(futures), False
    while left:
        with contextlib.suppress(queue.Empty):
            yield finished.get(timeout=POLL)
            left -= 1
        if not stopping and stop.requested():
            stopping = True
            on_stop()


def raise_if_stopped(root: Path, run_id: str, plans: Sequence[ShardPlan]) -> None:
    """After the shards settled: ``RunInterrupted`` if a stop was requested."""
    if stop.requested():
        written = sum(part_path(root, run_id, p.shard_id).exists() for p in plans)
        raise RunInterrupted(f"{written} of {len(plans)} shards written to {root} (run {run_id})")


def cancel_pending(futures: Sequence[PrefectFuture]) -> None:
    """Cancel the thread-pool shards that have not started (a running one stops itself)."""
    for future in futures:
        future.wrapped_future.cancel()


def start_prefect_server() -> None:
    """Without ``PREFECT_API_URL``: start Prefect's temporary server now, in its own process
    group (see the module docstring). Prefect's clients find it, as they would their own."""
    global _server
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or _server is not None:
        return
    _server = _own_group_server()()
    try:
        _server.start()
    except RuntimeError as err:  # it did not answer in time (a slow first start creates its database)
        raise PrefectServerError(
            f"{first_line(err)} Raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        ) from None


@functools.cache
def _own_group_server() -> type:
    """Prefect's temporary server class, starting its process in a process group of its own.
    Built on first use: Prefect's server module takes seconds to import."""
    from prefect.server.api import server as prefect_server

    class OwnGroupServer(prefect_server.SubprocessASGIServer):
        # One instance per process: Prefect's clients, asking for theirs, get this one.
        def _run_uvicorn_command(self) -> subprocess.Popen:
            # Prefect builds the command line; only how the process starts changes, for this
            # call (made before the flow starts, so no other thread is starting processes).
            popen = functools.partial(subprocess.Popen, process_group=0, preexec_fn=_die_with_parent)
            real, prefect_server.subprocess = prefect_server.subprocess, SimpleNamespace(Popen=popen)
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = real

    return OwnGroupServer


_PR_SET_PDEATHSIG = 1
# Looked up here, not in the forked child, where loading a library could wait on a lock that
# another thread of this process held at fork time.
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the server's process before it starts: on Linux, get SIGTERM when winnow dies (even by
    SIGKILL), so that a server in its own group never outlives the run."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
