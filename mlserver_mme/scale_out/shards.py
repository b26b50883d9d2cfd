"""How one machine is split into shards: how many, their ports, and each one's share of the budgets.

A shard is one ``mlserver start`` process on loopback. Shard ``i`` of a server whose
first shard port is ``base`` listens on::

    HTTP     base + 3i
    gRPC     base + 3i + 1
    metrics  base + 3i + 2

The budgets (``MLSERVER_MME_MAX_LOADED_MODELS``, ``..._MEMORY_LIMIT``,
``..._DISK_LIMIT``) are for the whole server: each shard gets an equal share.
Each shard keeps its artifacts in its own folder, ``<cache_dir>/shard-<i>``: a
cache folder is cleaned at start-up (``partial/`` is emptied), so a shard
restarting in a shared folder would delete another's download in progress.
"""

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

from ..config import MMESettings
from ..observability.memory import parse_size

DEFAULT_SHARD_PORT = 8100
PORTS_PER_SHARD = 3


@dataclass(frozen=True)
class Shard:
    index: int
    http_port: int
    grpc_port: int
    metrics_port: int
    env: Dict[str, str] = field(default_factory=dict)
    """What this shard's environment adds to the server's."""

    @property
    def name(self) -> str:
        return f"shard-{self.index}"


def shard_count(text: Optional[str]) -> int:
    """``MLSERVER_MME_SHARDS``: a positive number, or ``auto`` for the CPUs this process may use."""
    text = (text or "1").strip().lower()
    if text == "auto":
        return usable_cpus()
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"MLSERVER_MME_SHARDS must be a positive number or 'auto', not '{text}'")
    return count


def usable_cpus() -> int:
    """CPUs this process may run on, capped by a cgroup CPU quota (a container's CPU limit)."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_cpu_quota() -> Optional[float]:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        with open("/sys/fs/cgroup/cpu.max") as file:
            quota, period = file.read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as quota_file, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as period_file:
            value = int(quota_file.read())
            return None if value <= 0 else value / int(period_file.read())
    except (OSError, ValueError):
        return None


def plan(count: int, settings: MMESettings, base_port: int = DEFAULT_SHARD_PORT) -> list:
    """The ``count`` shards of a server with these (whole-server) settings."""
    cache_dir = os.path.abspath(settings.cache_dir)
    shards = []
    for i in range(count):
        http = base_port + PORTS_PER_SHARD * i
        env = {
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_HTTP_PORT": str(http),
            "MLSERVER_GRPC_PORT": str(http + 1),
            "MLSERVER_METRICS_PORT": str(http + 2),
            "MLSERVER_MME_CACHE_DIR": os.path.join(cache_dir, f"shard-{i}"),
        }
        if settings.max_loaded_models is not None:
            env["MLSERVER_MME_MAX_LOADED_MODELS"] = str(share_of_count(settings.max_loaded_models, count, i))
        if settings.memory_limit:
            env["MLSERVER_MME_MEMORY_LIMIT"] = share_of_size(settings.memory_limit, count)
        if settings.disk_limit:
            env["MLSERVER_MME_DISK_LIMIT"] = share_of_size(settings.disk_limit, count)
        shards.append(Shard(i, http, http + 1, http + 2, env))
    return shards


def share_of_count(total: int, count: int, index: int) -> int:
    """Shard ``index``'s part of ``total`` models: equal parts, the remainder to the first shards, at least 1."""
    return max(1, total // count + (1 if index < total % count else 0))


def share_of_size(text: str, count: int) -> str:
    """One shard's part of a size setting: ``"80%"`` -> ``"26.666...%"``, ``"3GiB"`` -> bytes / count."""
    text = str(text).strip()
    if text.endswith("%"):
        return f"{float(text[:-1]) / count!r}%"
    return str(parse_size(text) // count)
