"""Remove temporary files that a killed writer left behind.

The writer (``winnow.catalog.writer``) writes ``.<name>.<pid>.<thread id>.tmp`` beside the final file and
renames it; a process killed in between (SIGKILL, power loss) leaves the temp file. Readers
never see it (it is a dot-file not ending in ``.parquet``), and a resumed run writes its own
temp names, so a leftover is only clutter. This removes the ones whose writer process no
longer runs on this machine; a live writer's temp files (a concurrent run) are left alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from winnow.catalog.embeddings import FOLDER

# .<name>.<pid>.<thread id>.tmp, or .<name>.<pid>.tmp as written before thread ids were added
_TEMP = re.compile(r"^\..+?\.(\d+)(?:\.\d+)?\.tmp$")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(*folders: str | Path) -> list[Path]:
    """Delete writer temp files in ``folders`` (not recursive) whose process is gone; return them."""
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TEMP.match(path.name)
            if match and not alive(int(match[1])):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def remove_run_temps(root: str | Path, run_id: str) -> list[Path]:
    """Delete the stale writer temp files of run ``run_id`` at catalog ``root`` (its parts',
    stored embeddings' and images' folders); return them. Called as a run starts."""
    runs = Path(root) / "runs" / run_id
    return remove_stale_temps(runs, runs / FOLDER, Path(root) / "images" / run_id)
