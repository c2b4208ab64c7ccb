"""One-line errors: how every command prints them, the first line of a library's message, and
a file whose error quotes one."""

import re

import pytest
import typer

from winnow.flows.console import one_line_errors
from winnow.flows.prefect_yaml import write_entry
from winnow.models.errors import first_line
from winnow.pipeline.config import ConfigError


def test_first_line_of_a_library_error():
    assert first_line(ValueError("  bad value\n  at line 3\n")) == "bad value"
    assert first_line(KeyError()) == "KeyError"  # no message: its type says what happened
    assert first_line(OSError("x" * 50), limit=20) == "x" * 17 + "..."
    assert first_line(OSError("x" * 20), limit=20) == "x" * 20


def test_a_broken_prefect_yaml_is_one_line(tmp_path):
    file = tmp_path / "prefect.yaml"
    file.write_text("deployments:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"prefect.yaml: not valid YAML \(.+\)$") as err:
        write_entry(file, {"name": "nightly", "entrypoint": "winnow.flows.schedule.scheduled_curate"})
    assert "\n" not in str(err.value)
    assert file.read_text() == "deployments:\n  - name: [unclosed\n"  # left as it was


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConfigError("bad key [bold] in out/[draft]/c.yaml"), 2),  # markup-like text stays as it is
        (PermissionError(13, "Permission denied", "out/[draft]/c.yaml"), 1),
    ],
)
def test_every_command_prints_an_error_as_one_line(capsys, error, status):
    with pytest.raises(typer.Exit) as exit, one_line_errors():
        raise error
    assert exit.value.exit_code == status
    printed = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().err)  # colours, if forced
    assert printed == f"error: {error}\n"
