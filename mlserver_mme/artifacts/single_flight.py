"""One run of an operation per key at a time, shared by everyone who asks for that key meanwhile."""

import asyncio
from typing import Awaitable, Callable, Dict, Hashable, TypeVar

T = TypeVar("T")


class SingleFlight:
    """Concurrent ``run(key, ...)`` calls share one task; the next call after it ends starts a new one.

    The task is shielded: a caller that gives up (a timeout, a client gone) does not cancel
    it for the others. Its failure is marked retrieved, since every caller may have given up.
    """

    def __init__(self):
        self._flights: Dict[Hashable, asyncio.Future] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    async def run(self, key: Hashable, operation: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = asyncio.ensure_future(operation())
            flight.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(flight)

    def _landed(self, key: Hashable, flight: asyncio.Future) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()
