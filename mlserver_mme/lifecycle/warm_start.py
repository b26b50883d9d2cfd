"""Warm restarts: the loaded models are recorded beside the disk tier and loaded again from it after a restart.

Every ``hot_set_record_seconds`` (when anything changed) the models loaded by use, most recently
used first, with the memory each took, are written to ``<cache_dir>/hot-set.json``. A restart of the
server, or of a shard by supervisord, starts with that record: the recorded models whose artifacts
are still on disk are loaded in the background, two at a time, in that order, while they fit. The
count stays under ``max_loaded_models`` and the measured memory, after each load, under 90% of
``memory_limit`` (a warm load that goes over unloads itself and ends the warm start). The eviction
policy gets back what it knew of their requests, and those no request used yet rank as the least
recently used, the coldest first. Nothing else is unloaded to make room for them, and nothing is downloaded for them (a copy found damaged is fetched again, as
at any load). Each is loaded from disk at once (its files' digests checked, as at every load from
disk) and its ETag is checked right after (a HEAD): a model overwritten in the store while the
server was down is downloaded then and swapped in, as an update (``revalidation.py``); one deleted
from the store stays loaded, as after any failed update check, until the budgets unload it.

``/ping`` answers at once; a request for a model whose warm load is under way waits for that load,
as for any other (one load per model). The warm loads take at most two of the load threads, so a
cold request for another model may wait for one of them.
"""

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING, List, Optional, Set

from ..folders import write_private_file
from ..naming import v2_name
from ..threads import in_io
from .budgets import NoRoom
from .entries import Entry, State

if TYPE_CHECKING:
    from . import ModelLifecycle

logger = logging.getLogger("mlserver.mme")

FILE_NAME = "hot-set.json"
MAX_RECORDED = 10_000  # models; a record stays a few hundred KB at most
LOADS_AT_ONCE = 2  # a HEAD, a read from disk and a parse each: two keep a core busy


def read_record(cache_dir: str, warn: bool = False) -> Optional[dict]:
    """The record in ``cache_dir`` (a JSON object), or None if there is none or it cannot be read as one
    (with ``warn``, said in the log)."""
    path = os.path.join(cache_dir, FILE_NAME)
    try:
        with open(path) as file:
            record = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        if warn:
            logger.warning("event=hot-set-unreadable path=%s error=%s", path, error)
        return None
    return record if isinstance(record, dict) else None


def recorded_prefix(cache_dir: str) -> Optional[str]:
    """The model prefix whose models the record in ``cache_dir`` lists, if there is a readable record."""
    prefix = (read_record(cache_dir) or {}).get("prefix")
    return prefix if isinstance(prefix, str) else None


class HotSet:
    def __init__(self, lifecycle: "ModelLifecycle", cache_dir: str, prefix: str, record_seconds: float):
        self.lifecycle = lifecycle
        self.path = os.path.join(cache_dir, FILE_NAME)
        self.prefix = prefix
        self.record_seconds = record_seconds
        self._recorded: Optional[list] = None  # what the file holds, as last written or read
        self._tasks: Set[asyncio.Task] = set()  # strong references: the loop keeps weak ones

    def start(self, warm_up: bool) -> None:
        """Start recording; with ``warm_up``, load the previous record's models first (in the background)."""
        for work in ((self._warm_up_then_record(),) if warm_up else (self._record_every(),)):
            task = asyncio.ensure_future(work)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def loaded_now(self) -> List[dict]:
        """The models loaded by use (not pinned, not hosted), most recently used first."""
        entries = [e for e in self.lifecycle.models if e.state is State.READY and not e.pinned and not e.hosted]
        entries.sort(key=lambda e: e.last_used, reverse=True)
        policy = self.lifecycle.models.policy
        return [
            {"target": e.target, "memory_bytes": e.memory_bytes, "requests": policy.requests(e.name)}
            for e in entries[:MAX_RECORDED]
        ]

    async def record(self) -> None:
        """Write the loaded models to the record, if they changed since it was written."""
        models = self.loaded_now()
        if models == self._recorded:
            return
        text = json.dumps({"prefix": self.prefix, "recorded_at": time.time(), "models": models})
        await in_io(write_private_file, self.path, text)
        self._recorded = models

    async def _record_every(self) -> None:
        while True:
            await asyncio.sleep(self.record_seconds)
            try:
                await self.record()
            except Exception:
                logger.exception("event=hot-set-record-failed path=%s", self.path)

    async def _warm_up_then_record(self) -> None:
        try:
            await self.warm_up(await in_io(self._read))
        except Exception:
            logger.exception("event=warm-start-failed")
        await self._record_every()

    def _read(self) -> List[dict]:
        record = read_record(os.path.dirname(self.path), warn=True)
        if record is None or record.get("prefix") != self.prefix:
            return []  # another prefix's models, or no record
        models = record.get("models")
        if not isinstance(models, list):
            return []
        self._recorded = models
        return [m for m in models if isinstance(m, dict) and isinstance(m.get("target"), str)]

    async def warm_up(self, models: List[dict]) -> None:
        """Load ``models`` (a record), in order, while they fit and their artifacts are on disk."""
        lifecycle = self.lifecycle
        started, outcomes = time.perf_counter(), {"loaded": 0, "skipped": 0}
        policy = lifecycle.models.policy
        for model in models:  # the eviction policy remembers what it knew of them
            requests = model.get("requests")
            policy.restore(v2_name(model["target"]), requests if isinstance(requests, int) else 0)
        count = lifecycle.budgets.max_loaded_models
        positions = {model["target"]: index for index, model in enumerate(models)}
        queue = iter(models)
        warm: List[Entry] = []  # loaded here, in the record's order
        full = False

        async def loader() -> None:
            nonlocal full
            for model in queue:  # shared by the loaders: each model is taken once
                # every model the lifecycle holds counts, loads under way included: nothing is unloaded for these
                if full or (count is not None and sum(not e.pinned for e in lifecycle.models) >= count):
                    full = True
                    return
                target = model["target"]
                name = v2_name(target)
                if (
                    lifecycle.models.get(name) is not None  # loaded by a request already
                    or name in lifecycle.pinned  # preloaded by MLServer at start-up
                    or name in lifecycle.reserved_names  # now a model of the start-up folder
                    or lifecycle.cache.on_disk(target) is None  # no download here
                ):
                    outcomes["skipped"] += 1
                    continue
                entry = lifecycle.load_in_background(target)
                await asyncio.wait((entry.loaded,))
                if entry.loaded.cancelled() or entry.loaded.exception() is not None:
                    full = full or isinstance(entry.loaded.exception(), NoRoom)
                    outcomes["skipped"] += 1
                    continue
                outcomes["loaded"] += 1
                warm.append(entry)
                lifecycle.revalidator.start(entry)  # its ETag, unchecked so far: swapped in if it changed
                logger.info("event=warm-load model=%s", target)

        await asyncio.gather(*(loader() for _ in range(LOADS_AT_ONCE)))
        # Loads end in the record's order, each the newest: the hottest would be the oldest. Those no request
        # used yet become the least recently used, the coldest first, so requests' models outrank them.
        for entry in sorted(warm, key=lambda e: positions[e.target]):
            if lifecycle.models.get(entry.name) is entry and entry.uses == 0:
                lifecycle.models.make_oldest(entry)
        if models:
            logger.info(
                "event=warm-start loaded=%d skipped=%d recorded=%d seconds=%.2f",
                outcomes["loaded"], outcomes["skipped"], len(models), time.perf_counter() - started,
            )
