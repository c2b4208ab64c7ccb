"""Shared fixtures: tiny random-weight models (built once per session), offline settings."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

# No hub, no telemetry, no chatter: set before any model library or Prefect is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "WARNING"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """The test models are tiny: thread start-up costs more than it saves on 2 cores."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared`` beside the checkout: real artifacts (LAION weights, PartiPrompts)."""
    return REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from winnow.models.testing import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    from winnow.scoring.testing import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_head(tmp_path_factory: pytest.TempPathFactory, tiny_clip) -> Path:
    from winnow.scoring.testing import build_tiny_aesthetic_head

    path = tmp_path_factory.mktemp("tiny-head") / "head.safetensors"
    build_tiny_aesthetic_head(path, dim=32)  # TINY_CLIP_CONFIG embed_dim
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def write_config(tiny_sd: Path, tiny_clip, tiny_head: Path):
    """``write(folder, prompts=None, **sections)``: a run config for the tiny models and its
    prompt file, written in ``folder``; returns the config's path. ``sections`` update the
    defaults key by key."""
    import yaml

    def write(folder: Path, prompts: list[str] | None = None, **sections) -> Path:
        prompt_file = folder / "prompts.txt"
        prompt_file.write_text("\n".join(prompts or ["a red circle", "a blue square", "a cat"]) + "\n")
        clip = {"model": str(tiny_clip.model), "pretrained": str(tiny_clip.pretrained)}
        data = {
            "prompts": {"path": str(prompt_file)},
            "generator": {"model": str(tiny_sd), "steps": 2, "batch_size": 4, "guidance": 3.0},
            "scorers": {"clip_score": {"clip": clip}, "aesthetic": {"clip": clip, "head": str(tiny_head)}},
            "select": {"keep": 2},
            "run": {"out": str(folder / "catalog"), "candidates": 3, "shard_size": 2},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
def make_config(tmp_path: Path, write_config):
    """``write_config`` into the test's ``tmp_path``."""
    return functools.partial(write_config, tmp_path)
