"""What ``/proc`` tells of a process and its tree: CPU time, memory (RSS, PSS), children, open files."""

import os
from typing import List, Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (less noisy than wall time on a shared box); 0 once it ended."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def machine_busy() -> float:
    """CPU seconds the whole machine spent so far, all but idle and iowait."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def children(pid: int) -> List[int]:
    """Direct children of ``pid``, whichever of its threads started them (the JVM forks from worker threads)."""
    found: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:  # it ended
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(child) for child in file.read().split()]
        except OSError:  # the thread ended
            pass
    return found


def tree_pids(root: int) -> List[int]:
    """``root`` and its descendants."""
    pids, frontier = [root], [root]
    while frontier:
        found = children(frontier.pop())
        pids += found
        frontier += found
    return pids


def tree_cpu(root: Optional[int]) -> float:
    return sum(cpu_seconds(pid) for pid in tree_pids(root)) if root else 0.0


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (``smaps_rollup``)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))


def tree_pss_bytes(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        try:
            total += pss_bytes(pid)
        except (OSError, StopIteration):
            pass
    return total


def tree_rss_bytes(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        try:
            total += rss_bytes(pid)
        except OSError:  # it ended meanwhile
            pass
    return total


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def command_line(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().replace(b"\0", b" ").decode(errors="replace")
