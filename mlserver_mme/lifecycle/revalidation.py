"""Updates: with ``revalidate_after``, a used model's ETag is checked in the background at most that often.

A changed artifact is fetched (outside the model's operation lock: a download can be
long), then swapped in under the lock, only if the model is still loaded: an evicted
model picks up the new artifact at its next load. MLServer's reload loads the new
version before it unloads the old one, and the budgets are applied to the result.
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Optional, Set

from ..errors import describe
from .entries import Entry, State

if TYPE_CHECKING:
    from . import ModelLifecycle

logger = logging.getLogger("mlserver.mme")


class Revalidator:
    def __init__(self, lifecycle: "ModelLifecycle", every: Optional[float]):
        self.lifecycle = lifecycle
        self.every = every
        self._running: Set[asyncio.Task] = set()  # strong references: the loop keeps weak ones

    def maybe_start(self, entry: Entry) -> None:
        """Called on each use of ``entry``: start a check if it is due."""
        if self.every is not None and entry.last_used - entry.checked_at >= self.every:
            self.start(entry)

    def start(self, entry: Entry) -> None:
        """Check ``entry``'s ETag now, in the background (unless a check of it is under way)."""
        if entry.hosted or entry.revalidating:
            return
        entry.revalidating = True
        task = asyncio.ensure_future(self._revalidate(entry))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _revalidate(self, entry: Entry) -> None:
        lifecycle = self.lifecycle
        try:
            artifact = await lifecycle.cache.fetch(entry.target, revalidate=True)
            if artifact.etag == entry.etag:
                return
            async with entry.operation:
                if lifecycle.models.get(entry.name) is not entry or entry.state is not State.READY:
                    return  # unloaded meanwhile: its next load reads the new artifact
                settings = await lifecycle.repository.settings_for(entry.target)
                # MLServer loads the new version, then unloads the old: the growth measured is new minus old (or 0)
                entry.model, growth = await lifecycle.loader.load(entry.target, settings)
                entry.memory_bytes = max(0, entry.memory_bytes + growth)
                logger.info("event=update model=%s old_etag=%s new_etag=%s", entry.target, entry.etag, artifact.etag)
                entry.etag = artifact.etag
            if not await lifecycle.budgets.fits(entry):
                logger.warning("event=over-memory model=%s (after its update, nothing else to unload)", entry.target)
        except Exception as error:  # keep serving the version we have
            logger.warning("event=update-failed model=%s error=%s", entry.target, describe(error))
        finally:
            entry.checked_at = time.monotonic()
            entry.revalidating = False
            lifecycle.drop_unused_versions()  # the version it replaced, once nothing holds it
