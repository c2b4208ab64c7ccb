"""The CLI's output does not depend on the terminal: written to a file, a pipe or a test's
capture, a line is never hard-wrapped, whatever COLUMNS says; on a terminal it still wraps."""

import io
import os
import subprocess
import sys

import pytest

from winnow.flows.console import make_console

LONG = "/tmp/" + "a-rather-long-folder-name/" * 6 + "config.yaml"  # over 160 characters


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["run", LONG], f"error: config file not found: {LONG}"),
        (["catalog", "stats", LONG], "error: no catalog parts found"),
    ],
)
def test_a_long_error_stays_one_line_at_40_columns(tmp_path, args, error):
    env = {**os.environ, "COLUMNS": "40", "TERM": "xterm"}
    result = subprocess.run(
        [sys.executable, "-m", "winnow", *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, not cut at 40 columns
    assert line.startswith(error) and LONG in line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_a_terminal_wraps(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("TERM", "xterm")
    console = make_console(stderr=True)  # the stream is looked up at each print
    text = "word " * 30

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    console.print(text)
    assert sys.stderr.getvalue() == text + "\n"

    monkeypatch.setattr(sys, "stderr", Terminal())
    console.print(text)
    lines = sys.stderr.getvalue().splitlines()
    assert len(lines) == 4 and all(len(line) <= 40 for line in lines)
