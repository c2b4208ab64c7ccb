"""Errors winnow reports to users as one line (the CLI prints them without a traceback)."""


def first_line(err: BaseException) -> str:
    """The first line of a library's error message (its type name if it has none), for one-line
    errors that say why."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class WinnowError(Exception):
    """Base class: the message is a complete, actionable one-line explanation."""


class ModelNotFoundError(WinnowError):
    """Weights that are neither local nor reachable on the model hub."""
