"""Errors winnow reports to users as one line (the CLI prints them without a traceback)."""


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of a library's error message (its type name if it has none), for one-line
    errors that say why; cut to ``limit`` characters (ending in "...") when given."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


class WinnowError(Exception):
    """Base class: the message is a complete, actionable one-line explanation."""


class ModelNotFoundError(WinnowError):
    """Weights that are neither local nor reachable on the model hub."""
