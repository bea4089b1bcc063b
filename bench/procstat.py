"""CPU and memory of processes, read from /proc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """`pid` and its children still running (gunicorn's master and its worker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [pid] + [int(p) for p in out.stdout.split()]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its children still running; 0 if gone."""
    total = 0
    for p in family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children, in MB."""
    total_kb = 0
    for p in family(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def run_delay_s(pid: int) -> float:
    """Seconds the threads of `pid` and its children spent runnable but waiting for a CPU
    (the second field of /proc/<task>/schedstat); 0 if gone."""
    total_ns = 0
    for p in family(pid):
        for stat in Path(f"/proc/{p}/task").glob("*/schedstat"):
            try:
                total_ns += int(stat.read_text().split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return total_ns / 1e9


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores together (the
    first line of /proc/stat: everything but idle and I/O wait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is counted in user time already
    return (sum(values[:8]) - idle) / TICKS
