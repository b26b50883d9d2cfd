"""A fixed number of slots shared fairly between tenants: a semaphore that takes turns.

The model check runs at most one child per CPU. With a plain FIFO queue, one tenant
who uploads many slow artifacts holds back every other tenant's first load
(six slow checks delayed another tenant's from 0.2 s to 9.2 s). Here each tenant
(the top-level folder of a target path) has its own queue, and a freed slot goes
to the next tenant in turn, so a tenant waits for at most one check per other
tenant ahead of it, not for the whole queue.
"""

import asyncio
import collections
import contextlib
from typing import AsyncIterator, Deque


def tenant_of(target: str) -> str:
    """The tenant a target path belongs to: its top-level folder ("" for a file at the top)."""
    return target.split("/", 1)[0] if "/" in target else ""


class FairSlots:
    def __init__(self, slots: int):
        self._free = slots
        self._queues: "collections.OrderedDict[str, Deque[asyncio.Future]]" = collections.OrderedDict()  # in turn order

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        if self._free > 0 and not self._queues:
            self._free -= 1
        else:
            granted = asyncio.get_running_loop().create_future()
            self._queues.setdefault(tenant, collections.deque()).append(granted)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted just as the waiter was cancelled: pass the slot on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._queues:
            tenant, queue = next(iter(self._queues.items()))
            granted = queue.popleft()
            if queue:
                self._queues.move_to_end(tenant)  # its next waiter goes after the other tenants'
            else:
                del self._queues[tenant]
            if not granted.done():  # a cancelled waiter's future is done: skipped
                granted.set_result(None)
                return
        self._free += 1
