"""The CLI's rich consoles, built in one place so that they all lay text out the same way.

On a terminal, rich wraps text and sizes tables to the window. Written anywhere else (a log
file, a pipe, CI, a test's captured output) a line is never hard-wrapped, whatever ``COLUMNS``
or the terminal the process was started from says: a one-line error stays one line, and a
table is as wide as its content.
"""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions

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
