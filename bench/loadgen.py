"""A closed-loop HTTP load generator: ``conc`` clients, each sends its next request when the last returns.

Keep-alive connections (one aiohttp pool), warm-up excluded from the figures, latencies from
``perf_counter_ns`` (uvloop's clock has millisecond resolution), and the CPU used by the client, the
server's process tree and the whole machine over the measured window, so a client-bound row shows.
"""

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, List, Optional

import aiohttp

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def tree_pids(root: int) -> List[int]:
    """``root`` and its descendants, whichever thread started them (the JVM forks from worker threads)."""
    pids, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        children = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as file:
                    children += [int(c) for c in file.read().split()]
        except OSError:
            pass
        pids += children
        frontier += children
    return pids


def tree_cpu(root: Optional[int]) -> float:
    return sum(_proc_cpu(pid) for pid in tree_pids(root)) if root else 0.0


def tree_pss_bytes(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as file:
                total += next(int(line.split()[1]) * 1024 for line in file if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def machine_busy() -> float:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # all but idle and iowait


@dataclass
class Result:
    conc: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: List[float] = field(repr=False)
    client_cores: float = 0.0
    server_cores: float = 0.0
    machine_cores: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


Request = Callable[[aiohttp.ClientSession], Awaitable[bool]]


async def closed_loop(make_request: Request, conc: int, duration: float, warmup: float,
                      server_pid: Optional[int] = None, on_tick: Optional[Callable[[], None]] = None,
                      tick: float = 1.0) -> Result:
    """Run ``conc`` closed-loop clients for ``warmup + duration`` seconds; measure the last ``duration``."""
    connector = aiohttp.TCPConnector(limit=conc, force_close=False)
    latencies, errors = [], [0]
    clock = time.perf_counter_ns
    start = clock()
    window_start, window_end = start + int(warmup * 1e9), start + int((warmup + duration) * 1e9)
    marks = {}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client():
            while True:
                began = clock()
                if began >= window_end:
                    return
                ok = await make_request(session)
                ended = clock()
                if began >= window_start and ended <= window_end:
                    if ok:
                        latencies.append((ended - began) / 1e6)
                    else:
                        errors[0] += 1

        async def sampler():
            await asyncio.sleep(max(0.0, (window_start - clock()) / 1e9))
            marks["start"] = (time.process_time(), tree_cpu(server_pid), machine_busy())
            while clock() + tick * 1e9 < window_end:
                await asyncio.sleep(tick)
                if on_tick:
                    on_tick()
            await asyncio.sleep(max(0.0, (window_end - clock()) / 1e9))
            marks["end"] = (time.process_time(), tree_cpu(server_pid), machine_busy())

        await asyncio.gather(sampler(), *(client() for _ in range(conc)))
    (c0, s0, m0), (c1, s1, m1) = marks["start"], marks["end"]
    return Result(conc, len(latencies), errors[0], duration, latencies,
                  round((c1 - c0) / duration, 2), round((s1 - s0) / duration, 2), round((m1 - m0) / duration, 2))


def post(url: str, body: bytes, headers: dict) -> Request:
    async def request(session: aiohttp.ClientSession) -> bool:
        async with session.post(url, data=body, headers=headers) as reply:
            await reply.read()
            return reply.status == 200

    return request
