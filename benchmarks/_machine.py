"""Facts about the machine a benchmark runs on, shared by the scripts in benchmarks/."""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    """Total RAM in GiB from /proc/meminfo, or None where unavailable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def system_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``; steal counts as busy)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuClock:
    """CPU seconds of this process, wall seconds, and the other processes' share of the machine, since start.

    ``with CpuClock() as clock: work()`` then ``clock.cpu_s``, ``clock.wall_s``, ``clock.other_cpu_util``
    (None where ``/proc/stat`` is unreadable).
    """

    def __enter__(self) -> CpuClock:
        self._cpu0, self._busy0, self._wall0 = time.process_time(), system_busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu1, busy1, wall1 = time.process_time(), system_busy_seconds(), time.perf_counter()
        self.cpu_s, self.wall_s = cpu1 - self._cpu0, wall1 - self._wall0
        capacity = max(self.wall_s, 1e-9) * (os.cpu_count() or 1)
        busy0 = self._busy0
        self.other_cpu_util = (
            None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0 - self.cpu_s) / capacity)
        )


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
