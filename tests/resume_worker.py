"""The fork server of tests/test_resume.py: starts ``winnow`` processes forked from one Python
that imported torch, diffusers and Prefect once (``python tests/resume_worker.py``).

It reads one JSON job per line on stdin and answers on stdout:

- ``{"warm": CONFIG}``: load CONFIG's models here, so that forked runs find them in the
  process caches (as later shards of one run do); answers ``warm``.
- ``{"args": [...], "kill": KILL or null, "log": PATH}``: forks a child that runs the CLI with
  ``args`` (stdout and stderr to PATH, its exit status to ``PATH.rc``); answers the child's pid.

KILL makes the child kill itself with SIGKILL at a point inside the run, by a patch of
``os.replace`` installed in the child only (no test hook in library code):

- ``{"at": "png", "n": N}``: right after the N-th PNG rename (an image written, its part not);
- ``{"at": "parquet", "name": NAME}``: with the part NAME's temp file half written;
- ``{"at": "barrier", "dir": DIR, "n": N}``: not a kill: the first part rename waits until N
  processes wait there (a file each in DIR), so processes resuming one run provably write the
  same shard at the same time.

A part is a catalog part, ``runs/<run_id>/shard-*.parquet``, not a side file of the same name
in a subfolder (the stored embeddings).
"""

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import diffusers  # noqa: F401  imported once, before any fork
import open_clip  # noqa: F401
import torch

import winnow.flows.cli
import winnow.flows.curate


def is_part(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.suffix == ".parquet" and path.parent.parent.name == "runs"


def install_kill(kill: dict | None) -> None:
    real, pngs = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if kill and kill["at"] == "parquet" and is_part(dst) and Path(dst).name == kill["name"]:
            os.truncate(src, os.path.getsize(src) // 2)  # the part's temp file, half written
            os.kill(os.getpid(), signal.SIGKILL)
        if kill and kill["at"] == "barrier" and is_part(dst) and not pngs[0] < 0:
            pngs[0] = -1  # only the first part waits
            open(os.path.join(kill["dir"], str(os.getpid())), "w").close()
            for _ in range(6000):
                if len(os.listdir(kill["dir"])) >= kill["n"]:
                    break
                time.sleep(0.01)
        real(src, dst, *args, **kwargs)
        if kill and kill["at"] == "png" and str(dst).endswith(".png"):
            pngs[0] += 1
            if pngs[0] == kill["n"]:
                os.kill(os.getpid(), signal.SIGKILL)  # an image renamed, its shard's part not written

    os.replace = replace


def warm(path: str) -> None:
    """Load the run's models once, here. One torch thread: no OpenMP pool exists when the
    children fork."""
    from winnow.models.generator import load_pipeline
    from winnow.pipeline.config import load_config
    from winnow.scoring.base import build_scorers

    torch.set_num_threads(1)
    config = load_config(path)
    load_pipeline(config.generator)
    for scorer in build_scorers(config.scorers, torch.device("cpu")):
        scorer.setup()


def child(job: dict) -> None:
    """Run one ``winnow`` command line in this forked process, then exit without cleanup."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    install_kill(job["kill"])
    code = 1
    try:
        winnow.flows.cli.app(job["args"], prog_name="winnow")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except BaseException:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    with open(job["log"] + ".rc", "w") as f:
        f.write(str(code))
    os._exit(code)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        if "warm" in job:
            warm(job["warm"])
            print("warm", flush=True)
            continue
        pid = os.fork()
        if pid:
            print(pid, flush=True)
        else:
            child(job)


if __name__ == "__main__":
    main()
