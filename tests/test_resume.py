"""Crash safety: `winnow run` killed with SIGKILL at several points, then resumed, and run
concurrently with itself and with another run, leaves a catalog equal to an uninterrupted one.

Each `winnow run` is a real process running the real CLI (``winnow.flows.cli.app``). To spare the
~12 s of imports and the model loading per process on this small machine, processes are
forked from one "fork server" (tests/resume_worker.py) that imported torch/diffusers/Prefect
and loaded the tiny models (with one torch thread, so no thread pool exists at fork time);
children talk to the session's Prefect test server. Kill points inside a run come from a
patch of ``os.replace`` installed in the child only (no test hook in library code):

1. SIGKILL right after the 4th PNG rename: shard 0 done, one image of shard 1 written, its
   part not (between an image write and its shard's Parquet);
2. SIGKILL with shard 2's Parquet temp file half written and not renamed (mid-Parquet);
3. SIGKILL from the test, as soon as a randomly chosen image of shard 3 or 4 appears in the
   folder (during generation);
4. then two processes resume the run at the same time (a barrier holds each one's first part
   rename until both have one, so they provably write the same shard concurrently) while a
   third writes the same config under another run id: the uninterrupted reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from winnow.catalog.cleanup import remove_stale_temps
from winnow.catalog.query import read_catalog
from winnow.pipeline.prompts import read_prompts

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square", "a green star", "a pink cube", "a gray dot", "a teal ring"]
VOLATILE = ["run_id", "image_path", "created_at", "generation_seconds", "scoring_seconds"]

WORKER = Path(__file__).with_name("resume_worker.py")  # the fork server


class ForkServer:
    """Starts `winnow` processes forked from one pre-imported Python."""

    def __init__(self, folder: Path, api_url: str) -> None:
        env = {
            **os.environ,
            "PREFECT_API_URL": api_url,  # the session's test server: no ephemeral server per child
            "PREFECT_HOME": str(folder / "prefect-home"),
            "HF_HUB_OFFLINE": "1",
        }
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=REPO, env=env,
        )  # fmt: skip
        assert self.proc.stdout.readline().strip() == "ready"
        self.jobs = 0

    def warm(self, config: Path) -> None:
        self.proc.stdin.write(json.dumps({"warm": str(config)}) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "warm"

    def start(self, args: list[str], kill: dict | None = None) -> tuple[int, Path]:
        self.jobs += 1
        log = self.folder / f"job-{self.jobs}.log"
        self.proc.stdin.write(json.dumps({"args": args, "kill": kill, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline()), log

    @staticmethod
    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait(self, pid: int, log: Path, timeout: float = 240) -> int | None:
        """The exit status, or None if the process died without one (killed)."""
        deadline = time.monotonic() + timeout
        while self.alive(pid):
            assert time.monotonic() < deadline, f"winnow run did not finish: {log.read_text()[-2000:]}"
            time.sleep(0.05)
        rc = Path(f"{log}.rc")
        return int(rc.read_text()) if rc.exists() else None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()  # its children have all exited; skip its slow interpreter teardown
        self.proc.wait(timeout=30)


@pytest.fixture
def fork_server(tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    server = ForkServer(tmp_path, PREFECT_API_URL.value())
    yield server
    server.close()


def parts(root: Path, run_id: str) -> list[Path]:
    return sorted((root / "runs" / run_id).glob("*.parquet"))


def check_readers(root: Path, rows: int) -> None:
    """Every reader sees exactly the finished parts, whatever temp files lie beside them."""
    assert len(read_catalog(root)) == rows
    assert pq.read_table(root / "runs").num_rows == rows
    assert len(pd.read_parquet(root / "runs")) == rows
    glob = f"{root}/runs/*/*.parquet"
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}', union_by_name=true)").fetchall() == [
        (rows,)
    ]


def test_kill_resume_and_concurrent_runs(fork_server, make_config, tmp_path):
    config = make_config(
        PROMPTS,
        generator={"batch_size": 2},
        run={"candidates": 3, "shard_size": 1, "save_rejected": True, "contact_sheet": False},
        select={"keep": 1},
    )
    fork_server.warm(config)
    root = tmp_path / "catalog"
    run = ["run", str(config), "--run-id", "resumed"]
    n_rows = len(PROMPTS) * 3

    # 1. killed right after the first image of shard 1 is renamed, before shard 1's part
    pid, log = fork_server.start(run, kill={"at": "png", "n": 4})
    assert fork_server.wait(pid, log) is None, log.read_text()
    assert [p.name for p in parts(root, "resumed")] == ["shard-00000.parquet"]
    assert len(list((root / "images" / "resumed").glob("*.png"))) == 4  # 3 of shard 0, 1 of shard 1
    check_readers(root, 3)

    # 2. resumed, then killed in the middle of writing shard 2's Parquet part
    pid, log = fork_server.start(run, kill={"at": "parquet", "name": "shard-00002.parquet"})
    assert fork_server.wait(pid, log) is None, log.read_text()
    assert len(parts(root, "resumed")) == 2
    stale = list((root / "runs" / "resumed").glob(".shard-00002.parquet.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0
    check_readers(root, 6)  # the half-written part is invisible to pyarrow, pandas and DuckDB

    # 3. resumed, then killed from outside as soon as a randomly chosen image of shard 3 (or the
    # first of shard 4) appears: found by polling the folder, the process is generating
    ids = [p.id for p in read_prompts(tmp_path / "prompts.txt")]
    images = [f"{ids[3]}-{i:03d}.png" for i in range(3)] + [f"{ids[4]}-000.png"]
    target = random.Random(4).choice(images)
    pid, log = fork_server.start(run)
    while not (root / "images" / "resumed" / target).exists():
        assert fork_server.alive(pid), log.read_text()
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    assert fork_server.wait(pid, log) is None, log.read_text()
    assert not stale[0].exists()  # the stale temp file of the dead process 2 was removed
    finished = len(parts(root, "resumed"))
    assert 3 <= finished < len(PROMPTS)
    summary = {"random kill": f"at image {target}, {finished}/{len(PROMPTS)} parts written"}

    # 4. two processes resume the same run while a third writes another run into the catalog
    (barrier := tmp_path / "barrier").mkdir()
    hold = {"at": "barrier", "dir": str(barrier), "n": 2}
    jobs = [
        fork_server.start(run, hold),
        fork_server.start(run, hold),
        fork_server.start([*run[:-1], "other"]),
    ]
    assert [fork_server.wait(pid, log) for pid, log in jobs] == [0, 0, 0], [
        log.read_text()[-3000:] for _, log in jobs
    ]
    skipped = [int(re.search(r"(\d+) already done, skipped", log.read_text())[1]) for _, log in jobs[:2]]
    # Both resumed past the finished parts; one may also skip a later shard the other finished
    # first (shards are checked as they come up), so the counts need not be equal.
    assert all(s >= finished for s in skipped)
    assert len(list(barrier.iterdir())) == 2  # and both wrote the first unfinished shard
    summary["skipped by the concurrent resumers"] = skipped

    rows = read_catalog(root)
    resumed, other = (rows[rows["run_id"] == r].reset_index(drop=True) for r in ("resumed", "other"))
    assert len(resumed) == len(other) == n_rows  # nothing lost
    assert not resumed.duplicated(["candidate_id"]).any()  # nothing twice
    assert resumed["seed"].is_unique
    for row in rows.itertuples():  # every row's image (kept or not: save_rejected) matches its hash
        assert hashlib.sha256((root / row.image_path).read_bytes()).hexdigest() == row.image_sha256
    # the interrupted run equals the uninterrupted one: same rows, ids, seeds, scores, image bytes
    pd.testing.assert_frame_equal(
        resumed.drop(columns=VOLATILE).sort_values("candidate_id").reset_index(drop=True),
        other.drop(columns=VOLATILE).sort_values("candidate_id").reset_index(drop=True),
    )
    assert resumed["kept"].sum() == len(PROMPTS)
    assert not [p for p in root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    check_readers(root, 2 * n_rows)
    summary.update(processes=fork_server.jobs, rows=n_rows, lost=0, duplicated=0)
    print("kill test:", json.dumps(summary))


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    stale = tmp_path / f".shard-00001.parquet.{pid}.{threading.get_native_id()}.tmp"
    old_style = tmp_path / f".shard-00003.parquet.{pid}.tmp"  # written before thread ids
    live = tmp_path / f".shard-00002.parquet.{os.getpid()}.{threading.get_native_id()}.tmp"  # kept
    other = tmp_path / ".notes.tmp"
    for path in (stale, old_style, live, other):
        path.write_bytes(b"x")
    assert sorted(remove_stale_temps(tmp_path, tmp_path / "missing")) == [stale, old_style]
    assert not stale.exists() and not old_style.exists() and live.exists() and other.exists()
