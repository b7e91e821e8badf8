"""How many cores this process may really use: the number the thread budget starts from.

``os.cpu_count()`` counts the machine; a container or a ``taskset`` may give
the process far less. The usable count is the smallest of the CPUs in the
process's affinity mask and its cgroup CPU quota (v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``), rounded up: a quota of 1.5 CPUs lets two threads run
part-time, and rounding down would leave the half unused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CoreCount", "usable_cores"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class CoreCount:
    machine: int
    affinity: int
    cgroup_quota: float | None
    usable: int

    def describe(self) -> str:
        quota = "none" if self.cgroup_quota is None else f"{self.cgroup_quota:g} CPUs"
        return (
            f"{self.usable} usable (machine {self.machine}, affinity {self.affinity}, "
            f"cgroup quota {quota})"
        )


def usable_cores(cgroup_root: Path = _CGROUP_ROOT) -> CoreCount:
    machine = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
    quota = cgroup_cpu_quota(cgroup_root)
    usable = affinity if quota is None else min(affinity, max(1, math.ceil(quota)))
    return CoreCount(machine, affinity, quota, usable)


def cgroup_cpu_quota(root: Path = _CGROUP_ROOT) -> float | None:
    """CPUs the cgroup allows (quota ÷ period), or None when unlimited or unknown."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max" or not period:
            return None
        return int(quota) / int(period)
    v1_quota, v1_period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
    if v1_quota.is_file() and v1_period.is_file():
        quota_us = int(v1_quota.read_text().strip())
        if quota_us <= 0:
            return None
        return quota_us / int(v1_period.read_text().strip())
    return None
