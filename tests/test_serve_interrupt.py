"""Signals under `winnow serve` (real processes): SIGTERM to a scheduled flow run's process alone
ends that flow run as crashed while serve keeps serving; Ctrl-C to serve's process group ends
the running flow run as cancelled (its shards stop cleanly) and serve quietly, pausing the
schedule until serve starts again; nothing partial."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.test_interrupt import NOISE, Run, no_temp_files

PROMPTS = ["a red circle", "a blue square", "a green star", "a pink cube", "a gray dot", "a teal ring"]
NAME = "curate-scheduled/sig"


def wait_for(ready, what: str, timeout: float = 180):
    """``ready()``'s first true value (polled)."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def children(pid: int) -> list[int]:
    """Process ids of ``pid``'s children (Linux)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_signals_under_serve_end_the_flow_run_cleanly(make_config, tmp_path, prefect_harness, monkeypatch):
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_RUNNER_POLL_FREQUENCY", "1")  # serve picks a new flow run up within 1 s
    config = make_config(
        PROMPTS,
        generator={"batch_size": 3, "steps": 8},
        run={"candidates": 3, "shard_size": 2, "contact_sheet": False},
        select={"keep": 1},
    )
    root = tmp_path / "catalog"
    args = ["serve", str(config), "--cron", "0 3 1 1 *", "--name", "sig"]
    serve = Run(args, tmp_path, PREFECT_API_URL.value(), "serve")

    def manifests() -> int:
        return len(list((root / "runs").glob("*"))) if (root / "runs").exists() else 0

    with get_client(sync_client=True) as client:

        def state(flow_run_id):
            return client.read_flow_run(flow_run_id).state

        def registered():
            try:
                return client.read_deployment_by_name(NAME)
            except ObjectNotFound:
                return None

        wait_for(registered, "serve registers its deployment")
        # (a) SIGTERM to the flow run's process alone, once its manifest is written
        first = run_deployment(NAME, timeout=0)
        wait_for(lambda: manifests() == 1, "the first flow run starts")
        (pid,) = wait_for(lambda: children(serve.proc.pid), "the first flow run's process")
        os.kill(pid, signal.SIGTERM)
        ended = wait_for(lambda: (s := state(first.id)).is_final() and s, "the first flow run ends", 120)
        assert ended.name == "Crashed" and "RunInterrupted: 0 of 3 shards written" in ended.message
        assert serve.proc.poll() is None and no_temp_files(root)

        # (b) Ctrl-C to serve's process group while the next flow run runs
        second = run_deployment(NAME, timeout=0)
        wait_for(lambda: manifests() == 2 and state(second.id).is_running(), "serve runs the next flow run")
        serve.signal(signal.SIGINT)
        rc, out, seconds = serve.wait(timeout=120)
        assert rc == 0, out
        assert state(second.id).name == "Cancelled"
        # neither a traceback nor Prefect's errors (serve's own hint names `prefect deployment run`)
        assert not NOISE.search(out.replace("prefect deployment run", "")), out
        assert no_temp_files(root)
        # serve paused the schedule as it stopped; serving again resumes it
        assert registered().paused
        again = Run(args, tmp_path, PREFECT_API_URL.value(), "again")
        wait_for(lambda: not registered().paused, "serving again resumes the schedule")
        again.signal(signal.SIGINT)
        again_rc, out, _ = again.wait(timeout=120)
        # 130, or ended by the SIGINT itself (what a shell also shows as 130): the Ctrl-C came
        # before its runner started, when nothing runs yet
        assert again_rc in (0, 130, -signal.SIGINT), out
        assert not NOISE.search(out.replace("prefect deployment run", "")), out
        print(f"serve: SIGTERM to a flow run: Crashed; Ctrl-C to serve: rc {rc}, {seconds:.1f} s, Cancelled")
