"""Errors winnow reports to users as one line (the CLI prints them without a traceback)."""


class WinnowError(Exception):
    """Base class: the message is a complete, actionable one-line explanation."""


class ModelNotFoundError(WinnowError):
    """Weights that are neither local nor reachable on the model hub."""
