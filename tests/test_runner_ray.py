"""``runner.kind: ray``: the curate flow's shard tasks on a local Ray cluster (CPU, 2 workers).

One cluster serves the whole module (Ray takes seconds to start, its workers longer to import
torch). It declares two GPUs that do not exist, so the shard tasks take Ray's GPU path: one task
per GPU at a time, ``num_gpus=1`` each, where Ray would by default start a fresh worker process
(and a model load) per task. Torch finds no CUDA, so the work itself runs on the CPU.

The Ray runs work from a directory (``workdir``) other than the cluster's and write to a
relative catalog path, so they also check that workers follow the driver's directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect.states import Failed
from typer.testing import CliRunner

from winnow.catalog.query import read_catalog
from winnow.flows.cli import app, quiet_libraries
from winnow.flows.curate import _retryable, run_curate
from winnow.flows.ray_runner import RayRunnerError, check_api_reachable, cuda_index, task_options
from winnow.models.errors import ModelNotFoundError
from winnow.pipeline.config import ConfigError, RunnerConfig, load_config
from winnow.pipeline.prompts import read_prompts

PROMPTS = [f"a {c} {s}" for c in ("red", "green", "blue", "pink") for s in ("circle", "square", "star")]
SHARDS = 4  # 12 prompts, 3 per shard: more shards than workers
VOLATILE = ["created_at", "generation_seconds", "scoring_seconds"]
SCORES = ["score_clip_score", "score_aesthetic", "combined_score"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    quiet_libraries()  # the settings the CLI would add, so every run's workers get the same ones
    # Ray ends idle workers beyond a soft limit (about one per CPU); keeping them from one test
    # to the next spares a worker start (seconds of imports) per test.
    config = {"num_workers_soft_limit": 4}
    ray.init(
        "local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _system_config=config,
    )
    yield Path.cwd()  # where the cluster's processes start
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, write_config) -> Path:
    """A folder with the prompts and the run config (3 candidates, 5 pipeline calls per shard)."""
    folder = tmp_path_factory.mktemp("ray-driver")
    write_config(
        folder,
        PROMPTS,
        generator={"batch_size": 2},
        select={"keep": 1},
        run={"candidates": 3, "shard_size": 3, "contact_sheet": False},
    )
    return folder


def api_flow_runs() -> set:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {run.id for run in client.read_flow_runs(limit=200)}


def api_task_runs(flow_run_id) -> list:
    """The task runs that the flow's Prefect API (the test server) holds for ``flow_run_id``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def timed_run(config):
    began = time.perf_counter()
    before = api_flow_runs()
    summary = run_curate(config)
    (flow_run,) = api_flow_runs() - before
    return summary, flow_run, time.perf_counter() - began


@pytest.fixture(scope="module")
def reference(workdir, prefect_harness):
    """The thread runner's catalog for the config: what every Ray run must reproduce."""
    config = load_config(workdir / "config.yaml", {"run.out": str(workdir / "threads")})
    summary, _, seconds = timed_run(config)
    return summary, read_catalog(workdir / "threads"), seconds


@pytest.fixture(scope="module")
def ray_run(ray_cluster, workdir, reference, prefect_harness):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        config = load_config("config.yaml", {"runner.kind": "ray", "run.out": "ray-catalog"})
        summary, flow_run, seconds = timed_run(config)
    return summary, flow_run, seconds, read_catalog(workdir / "ray-catalog")


def assert_same_catalog(rows: pd.DataFrame, expected: pd.DataFrame, *, exact_images: bool) -> None:
    """Same rows, ids, seeds, kept set and reasons; scores within float tolerance."""
    assert not rows["candidate_id"].duplicated().any()
    rows, expected = (df.sort_values("candidate_id").reset_index(drop=True) for df in (rows, expected))
    drop = VOLATILE + SCORES + ([] if exact_images else ["image_sha256"])
    pd.testing.assert_frame_equal(rows.drop(columns=drop), expected.drop(columns=drop))
    for column in SCORES:
        pd.testing.assert_series_equal(rows[column], expected[column], rtol=1e-3, atol=1e-3)


def test_ray_catalog_equals_the_thread_runners(ray_run, reference, ray_cluster):
    summary, _, ray_seconds, rows = ray_run
    threads, expected, thread_seconds = reference
    assert summary.run_id == threads.run_id  # the runner is not part of the run's identity
    assert len(rows) == len(PROMPTS) * 3 and summary.shards == SHARDS and summary.skipped_shards == 0
    assert_same_catalog(rows, expected, exact_images=True)
    assert not (ray_cluster / "ray-catalog").exists()  # the workers wrote where the driver works
    timings = {"threads (1 worker)": thread_seconds, "ray (2 workers)": ray_seconds}
    print("ray vs threads, wall seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def test_ray_workers_are_reused_across_shards(ray_run, reference):
    summary, *_ = ray_run
    # Two GPU slots: at most two worker processes, each loading the models once, ran 4 shards
    # (Ray's default for GPU tasks, a fresh process per task, would show 4).
    host = reference[0].workers[0].split(":")[0]
    assert 1 <= len(summary.workers) <= 2 < summary.shards
    assert all(w.startswith(f"{host}:") and w not in reference[0].workers for w in summary.workers)


def test_every_task_run_is_on_the_flows_api(ray_run):
    _, flow_run, *_ = ray_run
    runs = api_task_runs(flow_run)
    assert sorted(run.name for run in runs) == [f"shard-{i:05d}" for i in range(SHARDS)]
    assert {run.state_name for run in runs} == {"Completed"}


def busy_shard_workers() -> list[int]:
    """Pids of this test process's Ray workers that are running a shard task (Ray titles them
    ``ray::process-shard``; the cluster's processes descend from this one)."""

    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"ray::process-shard"):
                continue
            pid = ancestor = int(proc.name)
            while ancestor > 1 and ancestor != os.getpid():
                ancestor = parent(ancestor)
        except (OSError, ValueError):
            continue  # exited meanwhile
        if ancestor == os.getpid():
            found.append(pid)
    return found


def test_a_killed_worker_s_shard_runs_again_elsewhere(ray_cluster, workdir, reference, monkeypatch):
    monkeypatch.chdir(workdir)
    overrides = {"runner.kind": "ray", "run.out": "killed", "runner.cpus_per_task": 2}
    config = load_config("config.yaml", overrides)  # 2 CPUs per task: one shard at a time
    run_id = reference[0].run_id
    first = read_prompts(workdir / "prompts.txt")[3].id  # shard 1's first prompt
    images = workdir / "killed" / "images" / run_id
    part = workdir / "killed" / "runs" / run_id / "shard-00001.parquet"
    killed: dict = {}

    def kill_mid_shard() -> None:
        # Shard 1's first prompt is selected and its kept image written after 2 of the shard's
        # 5 pipeline calls, its part after the last one: the worker is in the middle of the shard.
        deadline = time.monotonic() + 240
        while not list(images.glob(f"{first}-*.png")) and time.monotonic() < deadline:
            time.sleep(0.002)
        (pid,) = busy_shard_workers()
        os.kill(pid, signal.SIGKILL)
        killed.update(pid=pid, part_written=part.exists())

    killer = threading.Thread(target=kill_mid_shard, daemon=True)
    killer.start()
    summary, flow_run, _ = timed_run(config)
    killer.join(timeout=10)

    assert killed and not killed["part_written"], killed
    # the killed process (it may have run shard 0) died before writing shard 1; another one did
    assert any(not w.endswith(f":{killed['pid']}") for w in summary.workers), summary.workers
    # shard 1 ran again, from the start, in another process: nothing lost, nothing twice
    assert summary.skipped_shards == 0 and summary.generated == len(PROMPTS) * 3
    rows = read_catalog(workdir / "killed")
    assert len(rows) == len(PROMPTS) * 3 and rows.groupby("prompt_id")["kept"].sum().eq(1).all()
    assert_same_catalog(rows, reference[1], exact_images=False)  # 2 torch threads here, 1 there
    runs = api_task_runs(flow_run)
    assert sorted(run.name for run in runs) == [f"shard-{i:05d}" for i in range(SHARDS)]
    assert {run.state_name for run in runs} == {"Completed"}
    print("worker kill:", json.dumps({**killed, "workers": summary.workers, "rows": len(rows)}))


def test_winnow_errors_from_ray_workers_are_one_line_and_not_retried(ray_cluster, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    # A scorer's weights load on the worker (the driver resolves only the generator's model).
    config["scorers"]["aesthetic"]["head"] = str(workdir / "no-such-head.safetensors")
    Path("bad.yaml").write_text(yaml.safe_dump(config))
    before = api_flow_runs()
    result = CliRunner().invoke(app, ["run", "bad.yaml", "--runner", "ray", "--out", "bad"])
    assert result.exit_code == 2, result.output
    assert "error: aesthetic head" in result.output and "no-such-head" in result.output
    (flow_run,) = api_flow_runs() - before
    # No shard ran twice (not retried); shards not yet started when the first failed may never run.
    assert max(run.run_count for run in api_task_runs(flow_run)) == 1


def test_runner_options_retries_and_config_errors(make_config):
    # Prefect retries a shard that raised, except winnow's own errors (they would recur)
    assert _retryable(None, None, Failed(data=OSError("disk full")))
    assert not _retryable(None, None, Failed(data=ModelNotFoundError("model 'x' not found")))

    ray_config = RunnerConfig(kind="ray", retries=3)
    gpu = task_options(ray_config, {"CPU": 16, "GPU": 8}, {"A": "1"})
    assert gpu == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,  # one worker per GPU
        "max_calls": 0,
        "max_retries": 3,
        "runtime_env": {"env_vars": {"A": "1"}},
    }
    assert task_options(ray_config, {"CPU": 2}, {})["num_gpus"] == 0
    with pytest.raises(RayRunnerError, match=r"gpus_per_task is 0\.5 but the Ray cluster has 0 GPUs"):
        task_options(RunnerConfig(kind="ray", gpus_per_task=0.5), {"CPU": 2}, {})

    assert [cuda_index(i, "3,5") for i in ("3", "5")] == [0, 1]
    assert cuda_index("GPU-b2", "GPU-a1,GPU-b2") == 1 and cuda_index("2", None) == 2

    check_api_reachable("http://127.0.0.1:4200/api", ["10.0.0.1"], "10.0.0.1")
    check_api_reachable("http://10.0.0.1:4200/api", ["10.0.0.1", "10.0.0.2"], "10.0.0.1")
    with pytest.raises(RayRunnerError, match=r"nodes on other machines \(10.0.0.2\)"):
        check_api_reachable("http://localhost:4200/api", ["10.0.0.1", "10.0.0.2"], "10.0.0.1")

    path = make_config()
    for overrides, message in [
        ({"runner.address": "auto"}, "runner: address applies to kind: ray only"),
        ({"runner.kind": "ray", "runner.address": "http://head"}, "runner.address: expected auto, ray://"),
        ({"runner.kind": "ray", "runner.address": "auto", "runner.workers": 2}, "workers sizes a local"),
        ({"runner.kind": "ray", "runner.gpus_per_task": 2}, "runner.gpus_per_task"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(path, overrides)
    result = CliRunner().invoke(app, ["run", str(path), "--runner", "dask"])
    assert result.exit_code == 2 and "runner.kind" in result.output
