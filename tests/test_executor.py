"""The usable core count: the affinity mask, capped by the cgroup CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers import executor
from handlers.executor import cgroup_cpu_quota, usable_cpus


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000\n", 2), ("150000 100000\n", 2), ("max 100000\n", None)],
)
def test_cgroup_v2_quota_rounds_up_whole_cores(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    v2 = write(tmp_path / "cpu.max", cpu_max)
    assert cgroup_cpu_quota(v2, tmp_path / "none", tmp_path / "none") == expected


def test_cgroup_v1_quota_and_no_cgroup(tmp_path: Path) -> None:
    quota = write(tmp_path / "quota", "50000\n")
    period = write(tmp_path / "period", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "missing", quota, period) == 1
    unlimited = write(tmp_path / "unlimited", "-1\n")
    assert cgroup_cpu_quota(tmp_path / "missing", unlimited, period) is None
    assert cgroup_cpu_quota(tmp_path / "a", tmp_path / "b", tmp_path / "c") is None


def test_usable_cpus_is_the_smaller_of_affinity_and_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(executor, "cgroup_cpu_quota", lambda: 2)
    assert usable_cpus() == 2
    monkeypatch.setattr(executor, "cgroup_cpu_quota", lambda: None)
    assert usable_cpus() == 4
