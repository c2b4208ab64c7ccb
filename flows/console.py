"""The CLI's rich consoles, built in one place so that they all lay text out the same way.

On a terminal, rich wraps text and sizes tables to the window. Written anywhere else (a log
file, a pipe, CI, a test's captured output) a line is never hard-wrapped, whatever ``COLUMNS``
or the terminal the process was started from says: a one-line error stays one line, and a
table is as wide as its content.

Every command reports a failure the same way: one ``error: ...`` line on stderr, no traceback
(``one_line_errors``, ``fail``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from winnow.models.errors import WinnowError

UNWRAPPED = 1_000_000  # columns, when not writing to a terminal: longer than any line winnow prints


class _Console(Console):
    """A rich ``Console`` that takes the terminal's width only while it writes to a terminal.

    Decided at each print, not when the console is made: a test runner (or a redirect made by
    the caller) swaps the streams after the module-level consoles exist.
    """

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if _on_a_terminal(self) else ConsoleDimensions(UNWRAPPED, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


def _on_a_terminal(console: Console) -> bool:
    """Whether the console's stream is a TTY (rich's ``is_terminal`` also says yes to
    ``FORCE_COLOR``, which asks for colour in a log, not for wrapping)."""
    try:
        return console.file.isatty()
    except (AttributeError, ValueError):  # a stream without isatty, or one closed at exit
        return False


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout, or stderr with ``stderr=True`` (the stream is looked up at each print)."""
    return _Console(stderr=stderr)


err_console = make_console(stderr=True)


def fail(message: object, status: int = 2) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``status``."""
    err_console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(status) from None


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Report a ``WinnowError`` raised in the block as one ``error:`` line with exit status 2,
    and an ``OSError`` (a full disk, a read-only folder, a missing output folder) with exit
    status 1; what was written before it stays written."""
    try:
        yield
    except WinnowError as err:
        fail(err, 2)
    except OSError as err:
        fail(err, 1)
