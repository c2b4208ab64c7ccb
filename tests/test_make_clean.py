"""`make clean` removes build and run outputs only: never a file or folder that git tracks."""

import os
import shlex
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]


def tracked_paths() -> set[str]:
    """Every tracked file and every folder that holds one, relative to the repository."""
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True)
    files = [PurePosixPath(f) for f in listed.stdout.split("\0") if f]
    folders = {str(parent) for f in files for parent in f.parents if parent != PurePosixPath(".")}
    return {str(f) for f in files} | folders


def test_make_clean_names_no_tracked_path():
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    tracked = tracked_paths()
    assert {"catalog", "flows", "tests"} <= tracked
    # Under `make test` this is a sub-make: without the parent's flags, and no "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    command = ["make", "--no-print-directory", "-n", "clean"]
    dry = subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=True, text=True)
    words = [w.removeprefix("./").rstrip("/") for w in shlex.split(dry.stdout)]
    assert "rm" in words
    for word in words:  # a word that is a tracked path, or a glob that matches one
        hits = sorted(p for p in tracked if fnmatch(p, word))
        assert not hits, f"`make clean` would remove {word!r}: tracked {hits[:3]}"
