"""Tests that need something CI provides (a browser, an optional extra, the shared real
weights): without it they skip on a developer's machine and fail in CI (``.ci/run`` sets
``CI=true``), so CI never passes by skipping them. The tests never install anything."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether the tests run in CI (``CI`` is ``true`` or ``1``)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def unavailable(why: str) -> NoReturn:
    """Fail the calling test in CI, else skip it; ``why`` says what is missing and who provides it."""
    if in_ci():
        pytest.fail(f"CI: {why}")
    pytest.skip(why)
