"""Ctrl-C, SIGTERM and a full disk end `winnow run` cleanly, in one line, and the run resumes.

Each interrupted `winnow run` is a real process in a session of its own (as a terminal's
foreground job is a process group); signals go to the whole group, as Ctrl-C does, or to the
process alone, as a supervisor's SIGTERM does. The moments are found by watching the catalog
folder, as tests/test_resume.py does: the run's manifest (the flow started; the shard task
loads its models), the first image of a shard (its prompts settle one by one: mid-shard), a
shard's Parquet part (between shards).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.test_resume import VOLATILE, check_readers, parts
from winnow.catalog.query import read_catalog
from winnow.flows.cli import app

PROMPTS = ["a red circle", "a blue square", "a green star", "a pink cube", "a gray dot", "a teal ring"]
SHARDS = 3  # shard_size 2
LINE = re.compile(
    r"^interrupted: (\d+) of 3 shards written to (\S+) \(run (\w+)\); run the same command to resume$"
)
NOISE = re.compile(r"traceback|error|exception|prefect|warning", re.IGNORECASE)


@pytest.fixture
def config(make_config):
    # 2 prompts a shard, one pipeline call per prompt (batch 3 = candidates 3): a shard writes
    # its first prompt's images while its second prompt's call runs.
    return make_config(
        PROMPTS,
        generator={"batch_size": 3, "steps": 8},
        run={"candidates": 3, "shard_size": 2, "save_rejected": True, "contact_sheet": False},
        select={"keep": 1},
    )


class Run:
    """One `winnow run` process in its own session; output (stdout and stderr) in a file."""

    def __init__(self, args: list[str], folder: Path, api_url: str | None, name: str) -> None:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PREFECT_HOME": str(folder / "prefect-home"),
            # a temporary server's first start creates its database: slow on a busy machine
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        }
        env.pop("PREFECT_API_URL", None)
        if api_url:
            env["PREFECT_API_URL"] = api_url
        self.log = folder / f"{name}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "winnow", *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )  # fmt: skip
        self.signalled = 0.0

    def when(self, ready, timeout: float = 180) -> None:
        """Wait until ``ready()`` is true (polled), while the process runs."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"moment not reached: {self.log.read_text()}"
            time.sleep(0.005)

    def signal(self, sig: int, group: bool = True) -> None:
        (os.killpg if group else os.kill)(self.proc.pid, sig)
        self.signalled = self.signalled or time.monotonic()

    def wait(self, timeout: float = 240) -> tuple[int, str, float]:
        """Exit status, output, seconds from the first signal to the exit."""
        rc = self.proc.wait(timeout=timeout)
        return rc, self.log.read_text(), time.monotonic() - self.signalled if self.signalled else 0.0


def interrupted(out: str, root: Path, run_id: str) -> int:
    """The one line an interrupted run prints, checked; its count of written shards."""
    lines = [line for line in out.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, out
    match = LINE.match(lines[0])
    assert match and Path(match[2]) == root and match[3] == run_id, out
    assert not NOISE.search(out), out  # neither a traceback nor Prefect's own errors
    written = int(match[1])
    assert written == len(parts(root, run_id))
    return written


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".")]


def recorded(folder: Path) -> tuple[list[str], list[int]]:
    """In the session's Prefect server, for the flow runs of this test's configs (those in
    ``folder``): the flow runs' states, and their shard task runs' run counts (2: retried)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        recent = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
        flows = [r for r in recent if str(folder) in str(r.parameters)]
        ids = FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in flows]))
        tasks = client.read_task_runs(flow_run_filter=ids)
    return sorted(r.state_name for r in flows), sorted(t.run_count for t in tasks)


def test_signals_stop_the_run_cleanly_and_it_resumes(config, tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    root, run_id = tmp_path / "catalog", "sig"
    args = ["run", str(config), "--run-id", run_id]
    # The uninterrupted reference runs beside the interrupted ones (the same config, another run id).
    reference = Run([*args[:-1], "ref"], tmp_path, api, "reference")
    images = root / "images" / run_id
    report: dict[str, str] = {}

    # 1. Ctrl-C to the process group while the shard task loads its models; no PREFECT_API_URL:
    # Prefect's temporary server is in the group's session and must outlive the signal.
    run = Run(args, tmp_path, None, "loading")
    run.when((root / "runs" / run_id).exists)  # its manifest is written, its shard about to start
    run.signal(signal.SIGINT)
    rc, out, seconds = run.wait()
    assert rc == 130, out
    assert interrupted(out, root, run_id) == 0 and no_temp_files(root)
    report["SIGINT group, loading"] = f"rc {rc}, {seconds:.1f} s"

    # 2. Ctrl-C to the group mid-shard: the first prompt of shard 1 has its images
    run = Run(args, tmp_path, api, "mid-shard")
    run.when(lambda: images.exists() and len(list(images.glob("*.png"))) > 6)  # shard 0's 6, then more
    run.signal(signal.SIGINT)
    rc, out, seconds = run.wait()
    assert rc == 130, out
    mid = interrupted(out, root, run_id)
    assert 1 <= mid < SHARDS and no_temp_files(root)
    report["SIGINT group, mid-shard"] = f"rc {rc}, {seconds:.1f} s, {mid} of {SHARDS} shards written"

    # 3. SIGTERM to the process alone (a supervisor) as soon as another shard's part is written
    run = Run(args, tmp_path, api, "between")
    run.when(lambda: len(parts(root, run_id)) > mid)
    run.signal(signal.SIGTERM, group=False)
    rc, out, seconds = run.wait()
    assert rc == 143, out
    between = interrupted(out, root, run_id)
    assert mid < between <= SHARDS and no_temp_files(root)
    report["SIGTERM process, between shards"] = f"rc {rc}, {seconds:.1f} s, {between} of {SHARDS} written"

    # 4. the rest of the run; nothing of the earlier ones is lost or made twice
    rc, out, _ = Run(args, tmp_path, api, "resume").wait()
    assert rc == 0, out
    assert f"({between} already done, skipped)" in out
    rc, out, _ = reference.wait()
    assert rc == 0, out

    rows = read_catalog(root)
    resumed, ref = (rows[rows["run_id"] == r].drop(columns=VOLATILE) for r in (run_id, "ref"))
    pd.testing.assert_frame_equal(  # same rows, ids, seeds, scores, kept set, image hashes
        resumed.sort_values("candidate_id").reset_index(drop=True),
        ref.sort_values("candidate_id").reset_index(drop=True),
    )
    assert len(resumed) == len(PROMPTS) * 3 and no_temp_files(root)
    check_readers(root, 2 * len(PROMPTS) * 3)
    # The session server's flow runs of this test: the two it interrupted crashed, none is left running.
    assert recorded(tmp_path)[0] == ["Completed", "Completed", "Crashed", "Crashed"]
    print("interrupts:", report)


def test_a_second_signal_exits_at_once(config, tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    root = tmp_path / "catalog"
    run = Run(["run", str(config), "--run-id", "twice"], tmp_path, PREFECT_API_URL.value(), "twice")
    run.when((root / "runs" / "twice").exists)
    run.signal(signal.SIGINT)
    run.signal(signal.SIGINT)
    rc, out, seconds = run.wait()
    assert rc == 130, out
    assert "Traceback" not in out
    print(f"second SIGINT: rc {rc}, {seconds:.2f} s")


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (root only; CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_not_retried_and_the_run_resumes(make_config, small_disk, prefect_harness):
    # tmpfs counts whole 4 KiB pages: a shard takes 8 (3 images, a part of ~17 KB), the
    # manifest 1; 48 KiB left fit one shard and the images of another, not its part.
    config = make_config(
        PROMPTS,
        run={"out": str(small_disk / "catalog"), "candidates": 3, "shard_size": 1, "save_rejected": True},
        runner={"retries": 2},
        select={"keep": 1},
    )
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (512 - 48) * 1024)
    runner = CliRunner()
    args = ["run", str(config), "--run-id", "full"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert f"[Errno {errno.ENOSPC}] No space left on device (writing " in line, result.output
    assert f"{small_disk / 'catalog'}" in line and "Traceback" not in result.output
    print("full disk:", line)
    beyond = [m[0] for m in re.finditer(r"(\d+)/(\d+)", result.output) if int(m[1]) > int(m[2])]
    assert not beyond, result.output  # the progress bar never passed its total
    assert recorded(small_disk)[1][-1] == 1  # no shard task ran twice: a full disk is not retried
    written = len(parts(small_disk / "catalog", "full"))
    assert written < len(PROMPTS)
    assert no_temp_files(small_disk / "catalog")

    filler.unlink()  # space freed: the same command finishes the run
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"({written} already done, skipped)" in result.output
    assert len(read_catalog(small_disk / "catalog")) == len(PROMPTS) * 3


def test_a_failed_extra_is_a_warning_after_the_catalog_is_complete(make_config, tmp_path, prefect_harness):
    config = make_config(PROMPTS[:2], run={"contact_sheet": True})
    root = tmp_path / "catalog"
    for blocked in ("contact-sheet-extras.png", "report-extras.html"):  # a folder where the file goes
        (root / blocked).mkdir(parents=True)
    result = CliRunner().invoke(app, ["run", str(config), "--run-id", "extras"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.output
    assert "the report" in warnings[0] and "the contact sheet" in warnings[1]
    assert "Traceback" not in result.output
    assert len(read_catalog(root)) == 2 * 3
