"""The cores this process may really use, and the one bounded thread pool for part encodes.

``os.cpu_count()`` is the host's count: in a container limited to 2 CPUs on a 64-core node it
says 64, and 64 part writers of 32 MiB row groups each would blow the memory limit. The
usable count is the smaller of the affinity mask and the cgroup CPU quota.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


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
