"""``python -m winnow``: the ``winnow`` command line."""

from winnow.flows.cli import app

app(prog_name="winnow")
