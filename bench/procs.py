"""Whole processes, timed: wall seconds and peak RSS of a child, exactly (``os.wait4``).

``ru_maxrss`` from ``wait4`` is the kernel's high-water mark of the child's resident set (and
of any descendants it waited for), so no polling can miss a short peak. Each command runs
under a small wrapper process (see ``_WRAPPER``) so the bench's own size does not leak in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


# Runs the command in a fresh, small process: ru_maxrss is inherited across fork and exec
# (the kernel folds the parent's high-water mark in), so measuring children of the bench
# itself (hundreds of MB) would report the bench's own size. Times from spawn to reap;
# forwards SIGTERM to the command (to stop a daemon).
_WRAPPER = r"""
import json, os, signal, subprocess, sys, time
report, command = sys.argv[1], sys.argv[2:]
child = None
def forward(signum, frame):
    if child is not None:
        child.send_signal(signum)
signal.signal(signal.SIGTERM, forward)
began = time.perf_counter()
child = subprocess.Popen(command)
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - began
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as sink:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "code": code,
               "cpu": usage.ru_utime + usage.ru_stime}, sink)
sys.exit(0 if code == 0 else 1)
"""


class Measured:
    """A command running under the wrapper; its figures once it has ended."""

    def __init__(
        self,
        command: list[str],
        *,
        env: dict[str, str] | None,
        stdout: IO[bytes],
        stderr: IO[bytes],
    ) -> None:
        self.command = command
        handle, name = tempfile.mkstemp(prefix="akisnap-bench-", suffix=".json")
        os.close(handle)
        self._report = Path(name)
        wrapper = [sys.executable, "-I", "-S", "-c", _WRAPPER, str(self._report), *command]
        self._child = subprocess.Popen(
            wrapper, stdout=stdout, stderr=stderr, env=env, cwd=REPO_ROOT, start_new_session=True
        )

    def poll(self) -> int | None:
        return self._child.poll()

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the command has used so far (0 if gone)."""
        import psutil

        try:
            children = psutil.Process(self._child.pid).children()
            times = children[0].cpu_times() if children else None
        except psutil.Error:
            return 0.0
        return 0.0 if times is None else float(times.user + times.system)

    def terminate(self) -> None:
        if self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the end (kill the whole group past ``timeout``); the wrapper's report:
        seconds, maxrss_kib, cpu, code (``timed_out`` if killed)."""
        try:
            self._child.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(self._child.pid, signal.SIGKILL)
            self._child.wait()
            timed_out = True
        try:
            text = self._report.read_text()
        finally:
            self._report.unlink(missing_ok=True)
        report: dict[str, Any] = json.loads(text) if text else {"code": self._child.returncode}
        report["timed_out"] = timed_out
        return report


def run_measured(
    command: list[str], *, env: dict[str, str] | None = None, timeout: float = 1800
) -> ProcessRun:
    """Run ``command`` to the end; its wall time, peak RSS and CPU time. Non-zero exit stops
    the bench with the child's stderr (a benchmark of a failure would be worthless)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        report = Measured(command, env=env, stdout=out, stderr=err).wait(timeout)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    what = " ".join(command[:4])
    if report["timed_out"]:
        raise SystemExit(f"bench: {what} … took over {timeout:.0f} s; killed")
    if report["code"] != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise SystemExit(f"bench: {what} … exited {report['code']}:\n{tail}")
    return ProcessRun(report["seconds"], report["maxrss_kib"] * 1024, report["cpu"], stdout)


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
