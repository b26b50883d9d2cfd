"""Measuring the server's memory and reading memory and disk budgets.

Memory is the resident set size (RSS) of the server process plus the
proportional set size (PSS) of its descendants (MLServer's inference workers),
read from ``/proc``: the pages workers share with each other count once. RSS is
read from ``statm`` in microseconds; PSS needs ``smaps_rollup``, which takes
milliseconds in a process that maps numpy, scipy and xgboost, so it is only read
for workers (none with ``parallel_workers: 0``).

The load checks' fork server and multiprocessing's resource tracker
(``isolation.py``) are not counted: they hold no model, their memory is fixed
(about 120 MiB of PSS together), and the fork server's PSS swings by tens of MiB
as check children share its pages and exit, which would blur each load's growth.
"""

import ctypes
import os
import re
from typing import Iterator, Optional

# How isolation.py's helpers are started: python -c 'from multiprocessing.<module> import main; ...'
_CHECK_HELPERS = (b"multiprocessing.forkserver import", b"multiprocessing.resource_tracker import")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(text: str, total: Optional[int] = None) -> int:
    """``"2GiB"`` / ``"500MB"`` / ``"1073741824"`` -> bytes; ``"50%"`` -> that share of ``total``."""
    text = str(text).strip()
    if text.endswith("%"):
        if total is None:
            raise ValueError(f"a percentage ({text}) needs a total to be taken from")
        return int(total * float(text[:-1]) / 100)
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a size: use bytes, a unit such as 2GiB or 500MB, or a percentage")
    unit = (match.group(2) or "").lower().rstrip("b")
    return int(float(match.group(1)) * _UNITS[unit])


def total_memory() -> int:
    """The memory this process may use: the cgroup (container) limit if any, else the machine's."""
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as file:
                value = file.read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < machine:
            return int(value)
    return machine


def process_tree_memory(pid: Optional[int] = None) -> int:
    """Bytes used by ``pid`` (default: this process) and all its descendants."""
    pid = pid or os.getpid()
    return _rss(pid) + sum(_pss(child) for child in _descendants(pid))


def _descendants(pid: int) -> Iterator[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            children = [int(child) for child in file.read().split()]
    except OSError:
        children = []
    for child in children:
        if _is_check_helper(child):
            continue  # and its children: the checks themselves
        yield child
        yield from _descendants(child)


def _is_check_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read()
    except OSError:
        return False
    return any(helper in command for helper in _CHECK_HELPERS)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0  # the process has gone


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _rss(pid)


def release_free_memory() -> None:
    """Hand memory freed by unloaded models back to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
