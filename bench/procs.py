"""Whole processes, timed: wall seconds and peak RSS of a child, exactly (``os.wait4``).

``ru_maxrss`` from ``wait4`` is the kernel's high-water mark of the child's resident set (and
of any descendants it waited for), so no polling can miss a short peak.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class ProcessRun:
    seconds: float
    peak_rss: int  # bytes
    cpu_seconds: float  # user + system, all threads
    stdout: str


def akisnap_exe() -> str:
    """The console script beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("akisnap")
    if beside.is_file():
        return str(beside)
    found = shutil.which("akisnap")
    if found is None:
        raise SystemExit("bench: no `akisnap` console script (run `make install`)")
    return found


def bare_command(*args: str) -> list[str]:
    """``python -m bench.bare …``: the bare pyarrow/Lance script, a fresh interpreter."""
    return [sys.executable, "-m", "bench.bare", *args]


def run_measured(
    command: list[str], *, env: dict[str, str] | None = None, timeout: float = 1800
) -> ProcessRun:
    """Run ``command`` to the end; its wall time, peak RSS and CPU time. Non-zero exit stops
    the bench with the child's stderr (a benchmark of a failure would be worthless)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        began = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=REPO_ROOT)
        status, usage = _wait(child, timeout)
        seconds = time.perf_counter() - began
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise SystemExit(f"bench: {' '.join(command[:4])} … exited {code}:\n{tail}")
    return ProcessRun(
        seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, stdout
    )


def _wait(child: subprocess.Popen[bytes], timeout: float) -> tuple[int, os.struct_rusage]:
    """Block in wait4 (no polling delay in the timing); a timer kills a runaway child."""
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(child.pid, 0)
    finally:
        timed_out = not timer.is_alive()
        timer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    if timed_out:
        raise SystemExit(f"bench: {child.args!r} took over {timeout:.0f} s; killed")
    return status, usage


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_disk(path: Path, needed: int, what: str) -> bool:
    """True if ``path`` has ``needed`` bytes free (plus 2 GiB of slack); else say why not."""
    free = free_bytes(path)
    if free >= needed + 2 * GIB:
        return True
    print(
        f"   skipped {what}: needs ~{needed / GIB:.1f} GiB free under {path}, "
        f"{free / GIB:.1f} GiB free (use --workdir elsewhere)"
    )
    return False
