"""Several kinds of clients on the same models at once, for the stress test and ``python -m bench soak``.

Each client is a coroutine with its own HTTP connection, looping over one kind of call
(SageMaker invocations, V2 load/unload, bad targets, ...) with a seeded choice of model.
Every answer is recorded by kind and status; a dropped connection or a timeout is recorded
too, and ``unexpected()`` lists whatever a correct server never answers.
"""

import asyncio
import collections
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import httpx

ROW = b"1995,3000,3,2,1.0,2\n"
TRANSPORT_ERROR = "transport"  # the status recorded for a dropped connection or a client timeout

# What a correct server may answer each kind of call.
EXPECTED = {
    "invoke": {200},
    "bad-target": {400},  # ValidationError: nothing under the prefix at that path
    "bad-body": {424},  # ModelError (the model's 400)
    "v2-load": {200},
    "v2-unload": {200, 404},  # 404: not loaded (another client unloaded it first)
    "v2-infer": {200},  # loaded on first use, as SageMaker requests
    "v2-index": {200},
}


def v2_name(target: str) -> str:
    return target[: -len(".tar.gz")].replace("/", "~2F")


@dataclass
class Tally:
    """Answers by (kind, status), and each call's latency by kind."""

    statuses: collections.Counter = field(default_factory=collections.Counter)
    latencies: Dict[str, List[float]] = field(default_factory=lambda: collections.defaultdict(list))
    examples: Dict[tuple, str] = field(default_factory=dict)  # one body per unexpected (kind, status)

    def record(self, kind: str, status, seconds: float, body: str = "") -> None:
        self.statuses[(kind, status)] += 1
        self.latencies[kind].append(seconds)
        if status not in EXPECTED[kind]:
            self.examples.setdefault((kind, status), body[:300])

    def count(self, kind: str) -> int:
        return sum(n for (k, _), n in self.statuses.items() if k == kind)

    def unexpected(self) -> Dict[tuple, int]:
        return {key: n for key, n in self.statuses.items() if key[1] not in EXPECTED[key[0]]}

    def take(self) -> "Tally":
        """What was recorded so far, leaving this one empty (per-minute figures)."""
        taken = Tally(self.statuses, self.latencies, self.examples)
        self.statuses, self.latencies, self.examples = collections.Counter(), collections.defaultdict(list), {}
        return taken


async def _call(http: httpx.AsyncClient, tally: Tally, kind: str, method: str, path: str, **request) -> Optional[int]:
    started = time.perf_counter()
    try:
        response = await http.request(method, path, **request)
    except httpx.HTTPError as error:
        tally.record(kind, TRANSPORT_ERROR, time.perf_counter() - started, repr(error))
        return None
    tally.record(kind, response.status_code, time.perf_counter() - started, response.text)
    return response.status_code


def invoke(targets: List[str]) -> Callable:
    async def call(http, tally, rng):
        target = rng.choice(targets)
        await _call(http, tally, "invoke", "POST", "/invocations", content=ROW,
                    headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target})
    return call


def v2_load_unload(targets: List[str]) -> Callable:
    async def call(http, tally, rng):
        name = v2_name(rng.choice(targets))
        await _call(http, tally, "v2-load", "POST", f"/v2/repository/models/{name}/load")
        await _call(http, tally, "v2-unload", "POST", f"/v2/repository/models/{name}/unload")
    return call


def v2_infer(targets: List[str]) -> Callable:
    request = {"inputs": [{"name": "input-0", "shape": [1, 6], "datatype": "FP32",
                           "data": [1995, 3000, 3, 2, 1.0, 2]}]}

    async def call(http, tally, rng):
        await _call(http, tally, "v2-infer", "POST", f"/v2/models/{v2_name(rng.choice(targets))}/infer", json=request)
    return call


def bad_target() -> Callable:
    async def call(http, tally, rng):
        await _call(http, tally, "bad-target", "POST", "/invocations", content=ROW,
                    headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": f"missing/{rng.randrange(10**6)}.tar.gz"})
    return call


def bad_body(targets: List[str]) -> Callable:
    async def call(http, tally, rng):
        await _call(http, tally, "bad-body", "POST", "/invocations", content=b"1,2,not-a-number\n",
                    headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": rng.choice(targets)})
    return call


def v2_index() -> Callable:
    async def call(http, tally, rng):
        await _call(http, tally, "v2-index", "POST", "/v2/repository/index", json={})
    return call


async def run(url: str, clients: List[Callable], tally: Tally, seed: int, stop: Callable[[], bool],
              timeout: float = 60.0) -> None:
    """Run every client in a loop until ``stop()``; each has its own connection and random stream."""

    async def loop(index: int, client: Callable) -> None:
        rng = random.Random(seed * 1000 + index)
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
            while not stop():
                await client(http, tally, rng)

    await asyncio.gather(*(loop(i, client) for i, client in enumerate(clients)))
