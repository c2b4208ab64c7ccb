"""winnow installs under one import name: a user's own ``models/`` or ``catalog.py`` never
shadows it, and the generic names are not importable from outside the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_generic_folder_names_are_not_import_names(tmp_path: Path) -> None:
    for name in ("models", "catalog", "flows", "scoring", "pipeline"):
        result = _python(f"import {name}", tmp_path)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, name


def test_a_users_own_models_package_does_not_shadow_winnows(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise SystemExit('the user module was imported')\n")
    (tmp_path / "catalog.py").write_text("raise SystemExit('the user module was imported')\n")
    result = _python("import winnow.models.generator, winnow.catalog.query; print('ok')", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_python_dash_m_winnow_runs_the_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "winnow", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "catalog" in result.stdout and "run" in result.stdout
