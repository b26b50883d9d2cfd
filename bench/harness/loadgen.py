"""A closed-loop HTTP load generator: ``conc`` clients, each sends its next request when the last returns.

Keep-alive connections (one aiohttp pool), warm-up excluded from the figures, latencies from
``perf_counter_ns`` (uvloop's clock has millisecond resolution), and the CPU used by the client, the
server's process tree and the whole machine over the measured window, so a client-bound row shows.
``run`` runs a coroutine on uvloop when it is installed.
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, List, Optional

import aiohttp

from .proc import machine_busy, tree_cpu

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def run(coroutine):
    return asyncio.run(coroutine) if uvloop is None else uvloop.run(coroutine)


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
