"""The HTML report: written by every flow run (with a Prefect artifact pointing at it) and by
`winnow report`; opened in headless Chromium, which must render every thumbnail without errors
(CI installs the browser before the tests; the tests never install anything)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.ci import unavailable
from winnow.catalog.query import read_catalog
from winnow.flows.cli import app
from winnow.flows.curate import run_curate
from winnow.pipeline.config import load_config

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    """A Chromium on PATH. CI must have one (``.ci/run`` installs Debian's chromium), so there
    a missing browser fails the test; on a developer's machine without one it is skipped."""
    for name in BROWSERS:
        if exe := shutil.which(name):
            return exe
    unavailable(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); .ci/run installs chromium")


def test_a_missing_browser_skips_here_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no browser, nothing to install it with
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no headless browser on PATH"):
        browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: no headless browser on PATH"):
        browser()
    fake = tmp_path / "chromium-browser"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert browser() == str(fake)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, prefect_harness, write_config):
    """A flow run (3 prompts x 3 candidates, 2 kept, rejected images not saved)."""
    folder = tmp_path_factory.mktemp("report")
    prompts = ["a red circle", "a blue square <b>bold</b>", "a cat"]
    return run_curate(load_config(write_config(folder, prompts)))


def test_flow_writes_report_and_artifact(flow_run):
    from prefect.artifacts import Artifact

    report = flow_run.catalog / f"report-{flow_run.run_id}.html"
    assert report.is_file()
    artifact = Artifact.get("curate-report")
    assert artifact is not None and str(report.resolve()) in artifact.data


def test_report_renders_in_headless_chromium(flow_run, tmp_path):
    root, run_id = flow_run.catalog, flow_run.run_id
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(root), "--run", run_id, "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    rows = read_catalog(root, run_id)
    with_image = int(rows["image_path"].notna().sum())
    assert html.count("<img ") == with_image == 6 and html.count("class='placeholder'") == 3
    assert html.count("data:image/png;base64,") == with_image
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # prompt text is escaped
    assert html.count("<svg class='hist'") == 3  # clip_score, aesthetic, combined
    assert html.count("not_top_k") == 3

    exe = browser()
    profile = tmp_path / "chromium-profile"
    flags = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert 'data-render="done"' in body[0]
    assert f'data-images="{with_image}/{with_image}"' in body[0]  # every <img> decoded
    assert 'data-errors="0"' in body[0]
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr

    shot = tmp_path / "report-screenshot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,1400", out.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[:2] == (1400, 1280)
    green = np.all(pixels == (0x2A, 0x9D, 0x4B), axis=-1)  # kept frames and kept histogram bars
    assert green.sum() > 1000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # thumbnails, not a blank page
    print(f"report screenshot: {shot}")
