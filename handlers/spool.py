"""Each process's spool folder (``pid-N``) under a store's spool directory, where parts are
encoded before upload: made per process, removed on exit, and swept once its process is gone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


def process_spool(base: Path) -> Path:
    """This process's own spool folder; folders of processes that died (SIGKILL leaves
    half-written parts behind) are removed on the way."""
    sweep_dead_spools(base)
    own = base / f"pid-{os.getpid()}"
    own.mkdir(parents=True, exist_ok=True)
    return own


def discard_process_spool(base: Path) -> None:
    """Remove this process's spool folder and whatever is in it (on exit, even Ctrl-C)."""
    shutil.rmtree(base / f"pid-{os.getpid()}", ignore_errors=True)


@dataclass(frozen=True)
class DeadSpool:
    path: Path
    size: int


def sweep_dead_spools(base: Path, *, dry_run: bool = False) -> list[DeadSpool]:
    """The spool folders of processes that are gone, with their sizes; removed unless
    ``dry_run``. A live process's folder (this one's included) is never touched."""
    dead = []
    for folder in sorted(base.glob("pid-*")) if base.is_dir() else []:
        pid = folder.name.removeprefix("pid-")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            dead.append(DeadSpool(folder, size))
            if not dry_run:
                shutil.rmtree(folder, ignore_errors=True)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
