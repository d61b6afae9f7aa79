"""The cores this process may really use, and the bounded executors for CPU- and disk-bound
steps, so the event loop never runs them.

``os.cpu_count()`` is the host's count: in a container limited to 2 CPUs on a 64-core node it
says 64, and 64 part writers of 32 MiB row groups each would blow the memory limit. The
usable count is the smaller of the affinity mask and the cgroup CPU quota.

- :func:`encode_pool`: the part writers of large encodes.
- :func:`run_blocking`: one small thread pool for the other work (``asyncio.to_thread`` would
  use the loop's default pool, sized for I/O waits, not for work): writing a downloaded export
  to disk, hashing what is read back from the store, building a small batch. Good for work
  that releases the GIL (I/O, hashlib, pyarrow) or is short.
- :func:`run_in_process`: one worker process, for work that holds the GIL for long in one C
  call: ``json.loads`` of a 15 MB request takes about a second, and a thread running it stops
  the loop just the same. Arguments and results cross as pickles (bytes and Arrow buffers:
  copies of a few milliseconds).
"""

from __future__ import annotations

import asyncio
import functools
import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")

P = ParamSpec("P")
T = TypeVar("T")


def usable_cpus() -> int:
    """Cores the scheduler lets this process run on, capped by the cgroup quota (≥ 1)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(affinity, quota) if quota is not None else affinity)


def cgroup_cpu_quota(
    v2: Path = CGROUP_V2_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD
) -> int | None:
    """The CPU limit of this cgroup, rounded up to whole cores; None when unlimited."""
    try:
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max" and period:
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        period_us = int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


@functools.cache
def encode_pool() -> ThreadPoolExecutor:
    """The process's part writers: at most one per usable core, whatever the number of jobs.

    Small jobs never come here (they encode in their own short task), so they never queue
    behind a large snapshot's part writers.
    """
    return ThreadPoolExecutor(max_workers=usable_cpus(), thread_name_prefix="akisnap-encode")


@functools.cache
def _work_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(2, usable_cpus()), thread_name_prefix="akisnap-work")


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the bounded work pool; the loop stays free meanwhile."""
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_work_pool(), call)


@functools.cache
def _process_pool() -> ProcessPoolExecutor:
    # spawn, not fork: the parent runs an event loop and threads, which a fork would copy.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


async def run_in_process(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the worker process (``fn`` must be a module-level function;
    arguments, result and raised error must pickle)."""
    call = functools.partial(fn, *args, **kwargs)
    # Submitting may start the worker (a fork and exec of this big process: 100 ms and
    # more), so it is done from a thread as well.
    future = await asyncio.to_thread(_process_pool().submit, call)
    return await asyncio.wrap_future(future)


async def start_process_worker() -> None:
    """Start the worker process now (the daemon does at start): starting it forks this
    process while holding the GIL, which would stall the loop in the middle of work."""
    await run_in_process(os.getpid)
