"""Numbers about a process (read from /proc) and about latency samples."""

from __future__ import annotations

import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: count fields after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn --workers: the supervisor and its workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
            except OSError:
                continue
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each process in `pid`'s tree."""
    times = {}
    for member in process_tree(pid):
        try:
            times[member] = cpu_seconds(member)
        except OSError:
            continue  # exited meanwhile
    return times


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ms(ns: float) -> float:
    return round(ns / 1e6, 2)


def latency(samples_ns: list[int]) -> dict[str, float | int | None]:
    """p50/p99/max in milliseconds (nearest rank) and the sample count."""
    if not samples_ns:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples_ns)
    n = len(ordered)

    def rank(q: float) -> int:
        return ordered[min(n - 1, max(0, int(q * n + 0.5) - 1))]

    return {"n": n, "p50_ms": ms(rank(0.50)), "p99_ms": ms(rank(0.99)), "max_ms": ms(ordered[-1])}


def core_ticks() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat; softirq counts as busy."""
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            numbers = [int(v) for v in values[:8]]
            idle = numbers[3] + numbers[4]  # idle + iowait
            ticks[name] = (sum(numbers) - idle, sum(numbers))
    return ticks


class CpuMeter:
    """CPU over one measured window, as a fraction of one core: the server's
    and this process's own time, and how busy each core was (loopback TCP work
    done in softirq is charged to no process, only to a core). A side near 1.0
    was the bottleneck."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._server0 = tree_cpu(server_pid) if server_pid else {}
        self._self0 = sum(os.times()[:2])
        self._wall0 = time.monotonic()
        self._cores0 = core_ticks()

    def read(self) -> dict[str, float | list[float] | None]:
        wall = max(time.monotonic() - self._wall0, 1e-9)
        load = (sum(os.times()[:2]) - self._self0) / wall
        server_s = self.server_seconds()
        server = None if server_s is None else server_s / wall
        cores = []
        for name, (busy, total) in core_ticks().items():
            busy0, total0 = self._cores0.get(name, (0, 0))
            cores.append(round((busy - busy0) / max(total - total0, 1), 2))
        # What neither process was charged for: softirq, the kernel, other programs on the machine.
        other = sum(cores) - load - (server or 0.0)
        return {
            "server_cpu": _round(server),
            "server_cpu_s": None if server_s is None else round(server_s, 3),
            "load_cpu": _round(load),
            "core_busy": cores,
            "other_cpu": _round(other),
        }

    def server_seconds(self) -> float | None:
        """The server's CPU seconds (utime + stime, every thread of every process of
        its tree) since the meter started; a process started meanwhile counts whole."""
        if not self.server_pid:
            return None
        now = tree_cpu(self.server_pid)
        return sum(seconds - self._server0.get(pid, 0.0) for pid, seconds in now.items())


def per_unit_us(cpu_s: float | None, count: int | None) -> float | None:
    """Microseconds of server CPU per unit (delivery, message, connect)."""
    if cpu_s is None or not count:
        return None
    return round(cpu_s * 1e6 / count, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
