"""The memory and disk budgets: which models to unload, and which artifacts to delete, when.

``max_loaded_models`` counts loading and loaded models that are not pinned; room is
made for a model once its artifact was fetched, so a request for a missing model unloads
nothing. ``memory_limit`` is checked with the model loaded, by measuring the server's
processes (``measure``, which tests and the bench replace). Victims are the eviction
policy's choice among the models that can go at once: loaded, not pinned, no request in
flight, no operation of their own under way. One pass runs at a time; disk deletions run
outside it.
"""

import asyncio
from typing import Awaitable, Callable, Optional, Set

from ..artifacts.cache import ArtifactCache
from ..naming import v2_name
from ..observability.memory import process_tree_memory
from ..observability.metrics import metrics
from .entries import Entry, ModelTable

Unload = Callable[[Entry, str], Awaitable[None]]


class NoRoom(Exception):
    """A load that may unload nothing (a warm restart's) does not fit: it unloaded itself."""


class Budgets:
    def __init__(self, models: ModelTable, unload: Unload, max_loaded_models: Optional[int],
                 memory_limit: Optional[int], cache: ArtifactCache,
                 measure: Callable[[], int] = process_tree_memory):
        self.models = models
        self.unload = unload  # (entry, reason): unloads an idle model right away
        self.max_loaded_models = max_loaded_models
        self.memory_limit = memory_limit
        self.cache = cache
        self.measure = measure  # the server's memory in bytes
        self._pass = asyncio.Lock()
        # the models whose requests kept a pass from unloading enough for the count: the release of the last
        # request of one of them runs the pass again (``ModelLifecycle.release``)
        self.count_blocked_by: Set[str] = set()

    def within_count(self) -> bool:
        """Whether the models counted (loading ones included) are within ``max_loaded_models``."""
        return self.max_loaded_models is None or self.models.counted() <= self.max_loaded_models

    def within_memory(self, share: float = 1.0) -> bool:
        """Whether the measured memory is within ``share`` of ``memory_limit`` (unloading nothing)."""
        if self.memory_limit is None:
            return True
        used = self.measure()
        metrics().memory_bytes.set(used)
        return used <= share * self.memory_limit

    async def make_room(self, protect: Entry) -> None:
        """Before ``protect`` loads: unload others until it fits the count (as far as they can go)."""
        async with self._pass:
            await self._enforce_count(protect)

    async def fits(self, protect: Entry) -> bool:
        """With ``protect`` loaded: apply both budgets; False if memory is still over with nothing left to unload."""
        async with self._pass:
            await self._enforce_count(protect)
            if self.memory_limit is None:
                return True
            used = self.measure()
            while used > self.memory_limit:
                victim = self.models.victim(protect)
                if victim is None:
                    break
                await self.unload(victim, "memory")
                used = self.measure()
            metrics().memory_bytes.set(used)
            return used <= self.memory_limit

    async def enforce_count(self) -> None:
        """Unload models over ``max_loaded_models`` (a pass that found the others busy, run again)."""
        async with self._pass:
            await self._enforce_count(None)

    async def _enforce_count(self, protect: Optional[Entry]) -> None:
        if self.max_loaded_models is None:
            return
        while self.models.counted() > self.max_loaded_models:
            victim = self.models.victim(protect, for_memory=False)
            if victim is None:  # the others are busy: over the count until one of them is released
                self.count_blocked_by = {entry.name for entry in self.models.busy(protect)}
                return
            await self.unload(victim, "count")
        self.count_blocked_by = set()

    async def trim_disk(self) -> None:
        """Delete least recently used artifacts of models the lifecycle does not hold, down to the disk limit."""
        await self.cache.evict_to_budget(in_use=lambda target: v2_name(target) in self.models)
