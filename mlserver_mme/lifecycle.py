"""The memory tier: which models are loaded, loading them once, unloading the least used.

Every SageMaker request goes through ``acquire``/``release``. A loaded model is
a dictionary look-up away. Otherwise one load runs per model (however many
requests wait for it; loads of different models run side by side) and each
request waits at most ``load_wait_timeout`` before ``ModelNotReadyException``.
A failed fetch or load is remembered for ``failure_ttl`` seconds and answered to
later requests without trying again.

Over ``max_loaded_models`` or ``memory_limit`` (measured memory of the server's
processes), the least recently used models that have no request in flight are
unloaded; pinned (preloaded) models never are. A model that does not fit even
when nothing else can be unloaded is unloaded again and its requests get a clear
error. Unloaded artifacts stay on disk until the disk budget needs the room.

With ``revalidate_after``, a used model's ETag is checked in the background at
most that often; a changed artifact is fetched and swapped in by MLServer's
reload, which loads the new version before unloading the old one.

Models loaded through the V2 repository API are counted once their load
completes (``after_external_load``); V2 unloads are noticed at the next use or
budget check (``_forget_unloaded``).
"""

import asyncio
import collections
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from mlserver import MLModel
from mlserver.errors import ModelNotFound

from .cache import observe
from .config import MMESettings, preload_targets
from .errors import AlreadyLoaded, BrokenModel, HostedModelNotFound, MMEError, ModelNotReady, ModelTooLarge, describe
from .memory import parse_size, process_tree_memory, release_free_memory, total_memory
from .metrics import metrics
from .naming import hosted_name, is_hosted_name, v2_name

logger = logging.getLogger("mlserver.mme")

MAX_REMEMBERED_FAILURES = 10_000
MAX_REMEMBERED_FAILURE_BYTES = 8 * 1024 * 1024  # names and messages of remembered failures


@dataclass(eq=False)
class Entry:
    target: str
    name: str
    model: MLModel
    etag: str = ""
    pinned: bool = False
    memory_bytes: int = 0  # measured growth of the server's memory when it loaded
    in_flight: int = 0
    unloading: bool = False
    swapping: bool = False
    checked_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)


class ModelLifecycle:
    def __init__(self, registry, repository, settings: MMESettings):
        self.registry = registry
        self.repository = repository
        self.cache = repository.cache
        self.settings = settings
        self.memory_limit = parse_size(settings.memory_limit, total_memory()) if settings.memory_limit else None
        self.pinned = {v2_name(target) for target in preload_targets(settings)}
        self._entries: "collections.OrderedDict[str, Entry]" = collections.OrderedDict()  # least recent first
        self._loads: Dict[str, asyncio.Future] = {}
        self._unloads: Dict[str, asyncio.Future] = {}
        self._failures: Dict[str, Tuple[float, MMEError]] = {}  # oldest first
        self._failure_bytes = 0
        self._budget = asyncio.Lock()  # one eviction pass at a time; loads do not wait on it
        self._metrics = metrics()

    # -- requests ---------------------------------------------------------------------------

    async def acquire(self, target: str) -> Entry:
        """The loaded model of ``target``, counted in flight until ``release``."""
        name = v2_name(target)
        entry = self._entries.get(name)
        if entry is not None and entry.model.ready and not entry.unloading:
            self._metrics.hits.inc()
            return self._use(entry)
        started = time.perf_counter()
        entry, waited = await self._wait_loaded(target, name)
        (self._metrics.misses if waited else self._metrics.hits).inc()
        self._metrics.loading_wait.observe(time.perf_counter() - started)
        return self._use(entry)

    @staticmethod
    def release(entry: Entry) -> None:
        entry.in_flight -= 1

    def _use(self, entry: Entry) -> Entry:
        entry.in_flight += 1
        entry.last_used = time.monotonic()
        self._entries.move_to_end(entry.name)
        if self.settings.revalidate_after is not None and not entry.swapping and not is_hosted_name(entry.name):
            if entry.last_used - entry.checked_at >= self.settings.revalidate_after:
                entry.swapping = True
                asyncio.ensure_future(self._revalidate(entry))
        return entry

    async def _wait_loaded(self, target: str, name: str) -> Tuple[Entry, bool]:
        deadline = time.monotonic() + self.settings.load_wait_timeout
        waited = False
        while True:
            entry = self._entries.get(name)
            if entry is not None and entry.model.ready and not entry.unloading:
                return entry, waited
            if entry is not None and not entry.unloading:
                self._forget(entry)  # unloaded behind our back (V2 unload, or replaced by a reload)
            pending = self._unloads.get(name) or self._loads.get(name)
            if pending is None:
                failure = self._failures.get(name)
                if failure is not None and failure[0] > time.monotonic():
                    raise copy.copy(failure[1])
                adopted = await self._adopt_registered(target, name)
                if adopted is not None:
                    return adopted, waited
                pending = self._loads[name] = asyncio.ensure_future(self._load(target, name))
                pending.add_done_callback(lambda done: (self._loads.pop(name, None), observe(done)))
            remaining = deadline - time.monotonic()
            waited = True
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(asyncio.shield(pending), remaining)
            except asyncio.TimeoutError:
                raise ModelNotReady(f"Model '{target}' is still loading; retry shortly.") from None

    # -- loading ----------------------------------------------------------------------------

    async def _load(self, target: str, name: str) -> None:
        try:
            await self._enforce_budgets(reserve=1)
            entry = await self._load_into_registry(target, name, await self.repository.settings_for(target))
            await self._enforce_budgets(protect=entry)
            self._forget_failure(name)
        except MMEError as error:
            if self.settings.failure_ttl > 0:
                self._remember_failure(name, error)
            logger.info("event=load-failed model=%s error=%s", target, error.sagemaker_code)
            raise

    def _remember_failure(self, name: str, error: MMEError) -> None:
        """Remember ``error`` for ``name``; many distinct bad names cost a bounded number of bytes."""
        now = time.monotonic()
        self._forget_failure(name)
        # Oldest first, and all remembered for the same time: the first ones expire first.
        while self._failures:
            oldest = next(iter(self._failures))
            full = len(self._failures) >= MAX_REMEMBERED_FAILURES or self._failure_bytes > MAX_REMEMBERED_FAILURE_BYTES
            if not full and self._failures[oldest][0] > now:
                break
            self._forget_failure(oldest)
        # a copy holds no traceback, so no frames are kept alive with it
        self._failures[name] = (now + self.settings.failure_ttl, copy.copy(error))
        self._failure_bytes += _failure_size(name, error)

    def _forget_failure(self, name: str) -> None:
        failure = self._failures.pop(name, None)
        if failure is not None:
            self._failure_bytes -= _failure_size(name, failure[1])

    async def _load_into_registry(self, target: str, name: str, settings) -> Entry:
        before = process_tree_memory()
        started = time.perf_counter()
        try:
            # MLServer imports the runtime and calls its load(): any failure there is the model's
            await self.registry.load(settings)
            model = await self.registry.get_model(name)
        except MMEError:
            raise
        except Exception as error:
            raise BrokenModel(f"The model '{target}' failed to load: {describe(error)}") from None
        elapsed = time.perf_counter() - started
        entry = self._add(target, name, model, settings.parameters.extra.get("etag", ""))
        entry.memory_bytes = max(0, process_tree_memory() - before)
        self._metrics.loading.observe(elapsed)
        self._metrics.model_memory.observe(entry.memory_bytes)
        logger.info(
            "event=load model=%s name=%s load_ms=%.1f memory_bytes=%d loaded=%d",
            target, name, elapsed * 1e3, entry.memory_bytes, len(self._entries),
        )
        return entry

    # -- SageMaker's hosting contract: SageMaker decides what is loaded -----------------------

    async def load_hosted(self, model_name: str, folder: str) -> Entry:
        """Load an unpacked model SageMaker downloaded; it stays until ``unload_hosted``."""
        name = hosted_name(model_name)
        if name in self._entries or name in self._loads:
            raise AlreadyLoaded(f"Model '{model_name}' is already loaded.")
        limit = self.settings.max_loaded_models
        if limit is not None and len(self._entries) >= limit:
            raise ModelTooLarge(f"No room for model '{model_name}': {limit} models are loaded.")
        settings = self.repository.settings_for_folder(model_name, folder, name)
        flight = self._loads[name] = asyncio.ensure_future(self._check_and_load(model_name, name, settings))
        try:
            entry = await flight
        finally:
            self._loads.pop(name, None)
        entry.pinned = True  # never unloaded by our budgets: SageMaker unloads on a 507
        if self.memory_limit is not None and process_tree_memory() > self.memory_limit:
            await self._unload(entry, "memory")
            raise ModelTooLarge(f"Model '{model_name}' does not fit in the memory limit of {self.memory_limit} bytes.")
        return entry

    async def _check_and_load(self, model_name: str, name: str, settings) -> Entry:
        """A hosted folder was unpacked by SageMaker, not by our cache: check it before loading it."""
        await self.repository.check_folder(model_name, settings.parameters.uri)
        return await self._load_into_registry(model_name, name, settings)

    def hosted(self) -> Dict[str, Entry]:
        """Hosted models by SageMaker's model name."""
        return {entry.target: entry for entry in self._entries.values() if is_hosted_name(entry.name)}

    def acquire_hosted(self, model_name: str) -> Entry:
        entry = self._entries.get(hosted_name(model_name))
        if entry is None or not entry.model.ready or entry.unloading:
            raise HostedModelNotFound(f"Model '{model_name}' is not loaded.")
        self._metrics.hits.inc()
        return self._use(entry)

    async def unload_hosted(self, model_name: str) -> None:
        entry = self._entries.get(hosted_name(model_name))
        if entry is None or entry.unloading:
            raise HostedModelNotFound(f"Model '{model_name}' is not loaded.")
        await self._unload(entry, "request")

    def _add(self, target: str, name: str, model: MLModel, etag: str) -> Entry:
        entry = Entry(target, name, model, etag=etag, pinned=name in self.pinned)
        self._entries[name] = entry
        self._metrics.loaded.set(len(self._entries))
        return entry

    def _forget(self, entry: Entry) -> None:
        if self._entries.get(entry.name) is entry:
            del self._entries[entry.name]
            self._metrics.loaded.set(len(self._entries))

    async def _adopt_registered(self, target: str, name: str) -> Optional[Entry]:
        """A model loaded through V2 (or preloaded at start-up) becomes one of ours."""
        try:
            model = await self.registry.get_model(name)
        except ModelNotFound:
            return None
        if not model.ready:
            return None
        return self._add(target, name, model, _extra(model).get("etag", ""))

    def _forget_unloaded(self) -> None:
        """Drop the entries of models unloaded behind our back (V2 unloads)."""
        for entry in list(self._entries.values()):
            if not entry.model.ready and not entry.unloading and entry.in_flight == 0:
                self._forget(entry)

    async def before_external_load(self) -> None:
        await self._enforce_budgets(reserve=1)

    async def after_external_load(self, target: str, name: str) -> None:
        """Called when a V2 load starts: once the model is ready, count it and apply the budgets."""
        deadline = time.monotonic() + self.settings.load_wait_timeout
        while time.monotonic() < deadline:
            entry = self._entries.get(name) or await self._adopt_registered(target, name)
            if entry is not None:
                await self._enforce_budgets(protect=entry)
                return
            await asyncio.sleep(0.02)  # MLServer has no load-completed hook to wait on

    # -- budgets ----------------------------------------------------------------------------

    async def _enforce_budgets(self, reserve: int = 0, protect: Optional[Entry] = None) -> None:
        async with self._budget:
            self._forget_unloaded()
            limit = self.settings.max_loaded_models
            if limit is not None:
                while sum(not e.pinned for e in self._entries.values()) + reserve > limit:
                    victim = self._victim(protect)
                    if victim is None:
                        break
                    await self._unload(victim, "count")
            if self.memory_limit is not None:
                await self._enforce_memory(protect)
            await self.cache.evict_to_budget(in_use=self._in_use)

    async def _enforce_memory(self, protect: Optional[Entry]) -> None:
        used = process_tree_memory()
        while used > self.memory_limit:
            victim = self._victim(protect)
            if victim is None:
                break
            await self._unload(victim, "memory")
            used = process_tree_memory()
        self._metrics.memory_bytes.set(used)
        if used > self.memory_limit and protect is not None and not protect.pinned and protect.in_flight == 0:
            await self._unload(protect, "memory")
            raise ModelTooLarge(
                f"Model '{protect.target}' does not fit in the memory limit of {self.memory_limit} bytes "
                f"(measured {used} bytes with it loaded and nothing else left to unload)."
            )

    def _victim(self, protect: Optional[Entry]) -> Optional[Entry]:
        for entry in self._entries.values():  # least recently used first
            if entry is not protect and not entry.pinned and entry.in_flight == 0 and not entry.unloading:
                return entry
        return None

    def _in_use(self, target: str) -> bool:
        name = v2_name(target)
        return name in self._entries or name in self._loads

    async def _unload(self, entry: Entry, reason: str) -> None:
        entry.unloading = True
        done = self._unloads[entry.name] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        try:
            await self.registry.unload(entry.name)
        except ModelNotFound:
            pass
        except Exception:
            logger.exception("event=unload-failed model=%s", entry.target)
        finally:
            self._forget(entry)
            del self._unloads[entry.name]
            done.set_result(None)
        release_free_memory()
        elapsed = time.perf_counter() - started
        self._metrics.unloading.observe(elapsed)
        self._metrics.evictions.labels(reason=reason).inc()
        logger.info(
            "event=evict reason=%s model=%s memory_bytes=%d idle_s=%.1f unload_ms=%.1f loaded=%d",
            reason, entry.target, entry.memory_bytes, time.monotonic() - entry.last_used, elapsed * 1e3,
            len(self._entries),
        )

    # -- updates ----------------------------------------------------------------------------

    async def _revalidate(self, entry: Entry) -> None:
        try:
            artifact = await self.cache.fetch(entry.target, revalidate=True)
            if artifact.etag == entry.etag:
                return
            settings = await self.repository.settings_for(entry.target)
            # MLServer loads the new version, makes it the default, then unloads the old one.
            await self.registry.load(settings)
            entry.model = await self.registry.get_model(entry.name)
            logger.info("event=update model=%s old_etag=%s new_etag=%s", entry.target, entry.etag, artifact.etag)
            entry.etag = artifact.etag
        except Exception as error:  # keep serving the version we have
            logger.warning("event=update-failed model=%s error=%s", entry.target, describe(error))
        finally:
            entry.checked_at = time.monotonic()
            entry.swapping = False


def _failure_size(name: str, error: MMEError) -> int:
    return len(name) + len(error.message) + 512  # the entry's objects, roughly


def _extra(model: MLModel) -> dict:
    parameters = model.settings.parameters
    return (parameters.extra or {}) if parameters is not None else {}
