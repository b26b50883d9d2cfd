"""The models the lifecycle knows, each with its state, in least-recently-used order; a policy picks victims.

A model's entry exists from the moment its load starts until its unload ends::

    (absent) -> FETCHING -> LOADING -> READY -> UNLOADING -> (absent)
                   |            |
                   +------------+--> (absent): the load failed

Only the lifecycle changes states. Requests use READY entries only; the others are
waited on through ``loaded`` (the load's outcome) and ``gone`` (the entry has left).
Loads, swaps and unloads of one model take turns on its ``operation`` lock.
"""

import asyncio
import collections
import enum
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from mlserver import MLModel

from ..observability.metrics import metrics
from .policy import LRU, Policy


class State(enum.Enum):
    FETCHING = "fetching"  # download, unpack and check of the artifact
    LOADING = "loading"  # room is made, the runtime loads it
    READY = "ready"  # requests use it
    UNLOADING = "unloading"  # waiting for its requests in flight, then unloaded


def _future() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class Entry:
    target: str  # the target path, or SageMaker's model name for a hosted model
    name: str  # MLServer's name
    pinned: bool = False  # never unloaded by the budgets
    hosted: bool = False  # loaded through SageMaker's hosting contract
    state: State = State.FETCHING
    model: Optional[MLModel] = None
    etag: str = ""
    memory_bytes: int = 0  # measured growth of the server's memory when it loaded
    load_seconds: float = 0.0  # the runtime's measured load: what a miss costs once the artifact is on disk
    uses: int = 0  # requests that used it since it loaded
    in_flight: int = 0
    waiting: int = 0  # requests waiting for it to become READY
    revalidating: bool = False
    checked_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    operation: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded: asyncio.Future = field(default_factory=_future)
    gone: asyncio.Future = field(default_factory=_future)
    idle: Optional[asyncio.Event] = None  # set by the last request in flight when an unload waits

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.idle is not None:
            self.idle.set()

    async def drained(self) -> None:
        """Wait until no request uses the model (an unload's first step)."""
        while self.in_flight > 0:
            self.idle = asyncio.Event()
            await self.idle.wait()


class ModelTable:
    """Entries by MLServer name, least recently used first; ``policy`` picks victims (LRU by default)."""

    def __init__(self, policy: Optional[Policy] = None):
        self._entries: "collections.OrderedDict[str, Entry]" = collections.OrderedDict()
        self.policy: Policy = policy or LRU()
        self._ready = 0
        self._gauge = metrics().loaded

    def get(self, name: str) -> Optional[Entry]:
        return self._entries.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: Entry) -> None:
        assert entry.name not in self._entries, entry.name
        self._entries[entry.name] = entry

    def touch(self, entry: Entry, used: bool = True) -> None:
        """``entry`` becomes the most recently used; ``used``: by a request, which the policy counts."""
        entry.last_used = time.monotonic()
        self._entries.move_to_end(entry.name)
        if used:
            entry.uses += 1
            self.policy.used(entry.name, self._ready, missed=entry.uses == 1)  # its first use: the request that loaded it

    def make_oldest(self, entry: Entry) -> None:
        """``entry`` becomes the least recently used (a warm restart's model no request used yet)."""
        self._entries.move_to_end(entry.name, last=False)

    def set_state(self, entry: Entry, state: State) -> None:
        if self._entries.get(entry.name) is entry:  # only entries in the table are counted
            self._ready += (state is State.READY) - (entry.state is State.READY)
            self._gauge.set(self._ready)
        entry.state = state

    def remove(self, entry: Entry) -> None:
        """``entry`` leaves the table (a failed load, or an unload's end)."""
        if self._entries.get(entry.name) is entry:
            self.set_state(entry, State.UNLOADING)
            del self._entries[entry.name]
            if not entry.gone.done():
                entry.gone.set_result(None)

    def ready_count(self) -> int:
        return self._ready

    def counted(self) -> int:
        """Models that count against ``max_loaded_models``: loading or loaded, not pinned."""
        return sum(not e.pinned and e.state in (State.LOADING, State.READY) for e in self._entries.values())

    def busy(self, protect: Optional[Entry] = None) -> List[Entry]:
        """The loaded, unpinned models other than ``protect`` that cannot go at once: a request holds them or
        waits for them, or an operation of their own is under way."""
        return [
            entry for entry in self._entries.values()
            if entry is not protect and entry.state is State.READY and not entry.pinned
            and (entry.in_flight > 0 or entry.waiting > 0 or entry.operation.locked())
        ]

    def victim(self, protect: Optional[Entry] = None, for_memory: bool = True) -> Optional[Entry]:
        """The policy's choice among the models that can be unloaded at once, without waiting for anything."""
        candidates = [
            entry for entry in self._entries.values()
            if entry is not protect
            and entry.state is State.READY
            and not entry.pinned
            and entry.in_flight == 0
            and entry.waiting == 0
            and not entry.operation.locked()
        ]
        return self.policy.choose(candidates, per_byte=for_memory)
