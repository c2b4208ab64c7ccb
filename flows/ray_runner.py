"""Shard tasks on a Ray cluster through prefect-ray, every task run recorded on one Prefect API.

``runner.kind: ray``: the flow runs in this process (the Ray driver); each ``process-shard``
task runs in a Ray worker process, through prefect-ray's ``RayTaskRunner``. What this module
adds to it:

- **One Prefect API.** A worker that finds no ``PREFECT_API_URL`` starts a temporary Prefect
  server of its own, so its task runs would land there instead of in the flow's UI. The
  driver uses ``PREFECT_API_URL`` when set, or starts the temporary server Prefect's local mode
  would (one per process, shared with the flow), and hands its URL to the workers in their
  Ray runtime environment, with server analytics off unless the user turned them on.
- **One model load per worker process.** Ray's default for tasks that use GPUs is a fresh
  worker process per task (``max_calls=1``), which would load the models again for every
  shard; here workers are kept (``max_calls=0``) and the models stay in their process caches.
  A kept worker can be handed a different GPU for a later task, which its CUDA context could
  not follow under Ray's per-task ``CUDA_VISIBLE_DEVICES``; so workers see every GPU of their
  node and each task selects the one Ray assigned it (``torch.cuda.set_device``; the model
  caches are per device).
- **Failures.** Prefect retries a shard that raised (``runner.retries``); Ray runs a shard
  again elsewhere when its worker process died (``max_retries``). Shards are idempotent.
- **Interrupts.** After Ctrl-C or SIGTERM the driver cancels the shard tasks (``cancel_tasks``)
  and, when it started the cluster, shuts it down: no worker keeps generating.
- **Paths.** Workers work in the driver's directory, so relative paths in the config mean the
  same on every node (which needs the same paths: a shared filesystem).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner

from winnow.catalog.compact import is_compacted
from winnow.models.errors import WinnowError, first_line
from winnow.pipeline.config import RunnerConfig

# Set in the shard tasks' runtime environment only: its presence tells a process it is one of
# this run's Ray workers, and its value is the driver's working directory.
DRIVER_DIR = "WINNOW_DRIVER_DIR"
# Quiet-and-offline settings that follow the driver into the workers when set there.
FORWARDED = (
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
    "PREFECT_SERVER_LOGGING_LEVEL",
    "HF_HUB_OFFLINE",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "TRANSFORMERS_VERBOSITY",
    "DIFFUSERS_VERBOSITY",
)


class RayRunnerError(WinnowError):
    """A Ray cluster that cannot run this config (unreachable, too small, unshared paths)."""


@contextmanager
def ray_task_runner(runner: RunnerConfig) -> Iterator[TaskRunner]:
    """Connect to (or start) the Ray cluster and yield the task runner for ``curate``.

    Shard tasks submitted inside the block get the config's Ray options. Ray is shut down on
    exit if this call started or joined it; a Ray session the caller began is left running.
    """
    import ray
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    owned = not ray.is_initialized()
    if owned:
        _connect(runner)
    try:
        api_url = prefect_api_url()
        alive = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
        check_api_reachable(api_url, alive, ray.util.get_node_ip_address())
        options = task_options(runner, ray.cluster_resources(), worker_env(api_url))
        with temporary_settings({PREFECT_API_URL: api_url}), remote_options(**options):
            yield RayTaskRunner(address=runner.address)
    finally:
        if owned:
            ray.shutdown()


def prefect_api_url() -> str:
    """``PREFECT_API_URL``, or the URL of this process's temporary Prefect server (started if
    needed: the same one Prefect's local mode gives the flow)."""
    url = PREFECT_API_URL.value()
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # one instance per process: the one get_client() uses
    server.start()
    return server.api_url


def _connect(runner: RunnerConfig) -> None:
    import ray

    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if runner.address is None:
        # A local cluster for this run only: the flow's Prefect UI shows the run, so Ray's
        # dashboard (seconds to start, several processes) is left out.
        kwargs["include_dashboard"] = False
        if runner.workers is not None:
            kwargs["num_cpus"] = math.ceil(runner.workers * runner.cpus_per_task)
    try:
        # "local": a new cluster even where `ray start` runs one (ray.init() would join that)
        ray.init(runner.address or "local", **kwargs)
    except ConnectionError as err:
        raise RayRunnerError(f"cannot join the Ray cluster at {runner.address}: {first_line(err)}") from None


def check_api_reachable(api_url: str, node_ips: list[str], local_ip: str) -> None:
    """A Prefect API on this machine's loopback address is reachable only by workers here."""
    host = urlparse(api_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    elsewhere = sorted(set(node_ips) - {local_ip})
    if loopback and elsewhere:
        raise RayRunnerError(
            f"the Ray cluster has nodes on other machines ({', '.join(elsewhere)}) that cannot reach "
            f"the Prefect API at {api_url}: start `prefect server start --host 0.0.0.0` and set "
            "PREFECT_API_URL=http://THIS_HOST:4200/api"
        )


def worker_env(api_url: str) -> dict[str, str]:
    """Environment variables of the shard tasks' worker processes."""
    env = {key: os.environ[key] for key in FORWARDED if key in os.environ}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED=os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        # Every GPU of the node stays visible; each task selects its own (prepare_worker).
        RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES="1",
    )
    env[DRIVER_DIR] = os.getcwd()
    return env


def task_options(runner: RunnerConfig, resources: Mapping[str, float], env: dict[str, str]) -> dict[str, Any]:
    """Ray options of a shard task on a cluster with ``resources`` (``ray.cluster_resources()``)."""
    gpus = runner.gpus_per_task
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    for name, need in (("GPU", gpus), ("CPU", runner.cpus_per_task)):
        if need > resources.get(name, 0):
            key = f"runner.{name.lower()}s_per_task"
            raise RayRunnerError(
                f"{key} is {need:g} but the Ray cluster has {resources.get(name, 0):g} {name}s"
            )
    return {
        "num_cpus": runner.cpus_per_task,
        "num_gpus": gpus,
        "max_calls": 0,  # keep worker processes, and the models they loaded, across shards
        "max_retries": runner.retries,  # a shard whose worker process died runs again
        "runtime_env": {"env_vars": env},
    }


def check_parts_visible(parts: list[str]) -> None:
    """The shard parts the tasks wrote are in the driver's catalog folder too (or in their
    run's compacted files: a concurrent resume of the run may have finished and compacted it)."""
    if unseen := [part for part in parts if not os.path.exists(part) and not is_compacted(Path(part))]:
        raise RayRunnerError(
            f"{len(unseen)} shard parts written by workers are not visible here (first: {unseen[0]}): "
            "the catalog folder must be one shared folder at the same path on every node"
        )


def cancel_tasks(futures: list) -> None:  # list[PrefectRayFuture]
    """Cancel the shard tasks of ``futures`` on the Ray cluster (after a stop request): queued
    ones never start; a running one gets a KeyboardInterrupt in its worker, its shard's part
    unwritten. Finished ones are left as they are."""
    import ray

    for future in futures:
        ray.cancel(future.wrapped_future)


def prepare_worker() -> None:
    """Before a shard, in one of this run's Ray worker processes (else nothing): work in the
    driver's directory and make the GPU Ray assigned to this task the current device."""
    folder = os.environ.get(DRIVER_DIR)
    if folder is None:
        return
    try:
        os.chdir(folder)
    except OSError:
        raise RayRunnerError(
            f"the run's directory {folder} does not exist on Ray node {socket.gethostname()}: "
            "every node needs the catalog and model paths at the same place (a shared filesystem)"
        ) from None
    import ray
    import torch

    ids = ray.get_gpu_ids()
    if ids and torch.cuda.is_available():
        torch.cuda.set_device(cuda_index(str(ids[0]), os.environ.get("CUDA_VISIBLE_DEVICES")))


def cuda_index(gpu_id: str, visible: str | None) -> int:
    """The torch device number of the GPU Ray calls ``gpu_id``: Ray's GPU ids are the node's
    ``CUDA_VISIBLE_DEVICES`` entries (numbers or UUIDs) when it is set, else device numbers."""
    return visible.split(",").index(gpu_id) if visible else int(gpu_id)
