"""The memory tier: which models are loaded, loading each once, unloading the least used.

Every way in goes through here: SageMaker requests (``acquire``/``release``), V2 calls
(``v2.py``: inference, metadata, repository load and unload, over REST and gRPC),
SageMaker's hosting contract (``hosted.py``), updates (``revalidation.py``) and the
budgets (``budgets.py``). Each model has one entry and one state (``entries.py``),
changed only here; operations on one model take turns, operations on different models
run side by side.

- A loaded model is a dictionary look-up away. Otherwise one load runs per model
  (however many requests wait for it) and each request waits at most
  ``load_wait_timeout`` before ``ModelStillLoading``; the load goes on.
- An unload (a V2 or hosting call, or the budgets) waits for the model's requests in
  flight; requests that arrive meanwhile wait for it to end and load the model again.
- An artifact's own faults are remembered for ``failure_ttl`` seconds (``failures.py``).
- Models MLServer loaded at start-up (``preload``) are adopted on first use, pinned.
"""

import asyncio
import copy
import logging
import time
from typing import Awaitable, Callable, Iterable, Set

from mlserver import MLModel
from mlserver.settings import ModelSettings

from ..artifacts.cache import LocalArtifact
from ..config import MMESettings, preload_targets
from ..errors import BadTargetHeader, ModelStillLoading, ModelTooLarge
from ..naming import v2_name
from ..observability.memory import parse_size, total_memory
from ..observability.metrics import metrics
from .budgets import Budgets, NoRoom
from .entries import Entry, ModelTable, State
from .evictions import EvictionMemory
from .failures import ARTIFACT_FAULTS, FailureMemory
from .hosted import HostedModels
from .loading import RegistryLoader
from .policy import make_policy
from .revalidation import Revalidator
from .warm_start import HotSet

__all__ = ["Entry", "ModelLifecycle", "NoRoom", "State"]

WARM_MEMORY_SHARE = 0.9  # of the memory limit a load that unloads nothing may fill: room is left for requests

logger = logging.getLogger("mlserver.mme")

Prepare = Callable[[Entry], Awaitable[ModelSettings]]


class ModelLifecycle:
    def __init__(self, registry, repository, settings: MMESettings, reserved_names: Iterable[str] = ()):
        self.registry = registry
        self.repository = repository
        self.cache = repository.cache
        self.settings = settings
        self.memory_limit = parse_size(settings.memory_limit, total_memory()) if settings.memory_limit else None
        if self.memory_limit is not None:
            metrics().memory_limit.set(self.memory_limit)
        self.pinned = {v2_name(target) for target in preload_targets(settings)}
        self.reserved_names = frozenset(reserved_names)  # the models of the start-up folder: MLServer's
        self.models = ModelTable(make_policy(settings.eviction_policy))
        self.failures = FailureMemory(settings.failure_ttl)
        self.loader = RegistryLoader(registry)
        self.budgets = Budgets(
            self.models, self._unload_idle, settings.max_loaded_models, self.memory_limit, self.cache
        )
        self.hosted = HostedModels(self)
        self.revalidator = Revalidator(self, settings.revalidate_after)
        self._tasks: Set[asyncio.Task] = set()  # loads and unloads; strong references, the loop keeps weak ones
        self._count_pass_due = False  # a budget pass is started for a release (Budgets.count_blocked_by)
        self.evicted = EvictionMemory(settings.reload_window)
        self.hot_set = HotSet(self, settings.cache_dir, settings.model_prefix, settings.hot_set_record_seconds)
        self._metrics = metrics()
        self.clock = time.perf_counter  # times loads (the bench's replay gives a virtual one)

    # -- requests ---------------------------------------------------------------------------

    async def acquire(self, target: str) -> Entry:
        """The loaded model of ``target``, counted in flight until ``release``; loaded first if need be."""
        entry = self.models.get(v2_name(target))
        if entry is not None and entry.state is State.READY:
            self._metrics.hits.inc()
            return self.use(entry)
        started = time.perf_counter()
        entry = await self._ready(target)
        self._metrics.misses.inc()
        self._metrics.loading_wait.observe(time.perf_counter() - started)
        return self.use(entry)

    def release(self, entry: Entry) -> None:
        entry.release()
        if entry.in_flight == 0 and entry.name in self.budgets.count_blocked_by and not self._count_pass_due:
            # a load went over the count while this model was busy: the policy may choose among more now
            self._count_pass_due = True
            task = self._keep(self.budgets.enforce_count())
            task.add_done_callback(self._count_pass_done)

    def _count_pass_done(self, task: asyncio.Task) -> None:
        # a release while the pass ran was seen by it: nothing is awaited between its pick and its verdict
        self._count_pass_due = False

    def use(self, entry: Entry) -> Entry:
        entry.in_flight += 1
        self.models.touch(entry)
        self.revalidator.maybe_start(entry)
        return entry

    async def _ready(self, target: str) -> Entry:
        """Wait for ``target``'s model to be READY, starting its load if no one has."""
        name = v2_name(target)
        if name in self.reserved_names:
            raise BadTargetHeader(f"The target model '{target}' has the V2 name of one of the server's own models.")
        deadline = time.monotonic() + self.settings.load_wait_timeout
        while True:
            entry = self.models.get(name)
            if entry is None:
                self.failures.raise_if_remembered(name)
                entry = self.start_load(target, name, self._fetch)
            if entry.state is State.READY:
                return entry
            # loading: wait for its outcome; unloading: wait for it to end, then load again
            awaited = entry.gone if entry.state is State.UNLOADING else entry.loaded
            remaining = deadline - time.monotonic()
            entry.waiting += 1  # a model its waiters have not used yet is no budget victim
            try:
                if remaining > 0:
                    await asyncio.wait((awaited,), timeout=remaining)
                if awaited is entry.loaded and awaited.done():
                    await self.outcome(awaited)  # still waiting: it yields, and the model is not used yet
            finally:
                entry.waiting -= 1
            if not awaited.done():
                raise ModelStillLoading(f"Model '{target}' is still loading; retry shortly.")

    @staticmethod
    async def outcome(loaded: asyncio.Future) -> None:
        """Wait for a load to end; raise its error: a copy per waiter, as many may share it.

        A load that found no room without unloading (NoRoom) raises nothing: its waiters look again,
        and start a load of their own.
        """
        await asyncio.wait((loaded,))  # shares the future without cancelling it if this waiter is
        if loaded.cancelled():  # the server is stopping
            raise ModelStillLoading("The model's load was interrupted; retry shortly.")
        error = loaded.exception()
        if error is not None and not isinstance(error, NoRoom):
            raise copy.copy(error)  # no traceback nor cause: responses and memory stay small

    # -- loading ----------------------------------------------------------------------------

    def start_load(
        self, target: str, name: str, prepare: Prepare, pinned: bool = False, hosted: bool = False, evicts: bool = True
    ) -> Entry:
        """Put a FETCHING entry for ``name`` in the table and start its load; ``entry.loaded`` tells the outcome.

        Without ``evicts``, the load unloads nothing: it fails with NoRoom, unloading itself, if the model
        does not fit the count or ``WARM_MEMORY_SHARE`` of the memory limit as things stand.
        """
        entry = Entry(target, name, pinned=pinned or name in self.pinned, hosted=hosted)
        entry.loaded.add_done_callback(_retrieved)  # every waiter may have given up
        self.evicted.count_reload(name, target)
        self.models.add(entry)
        self._keep(self._load(entry, prepare, evicts))
        return entry

    def load_in_background(self, target: str) -> Entry:
        """Start loading ``target`` for no request (a warm restart): its requests wait for this load.

        It unloads nothing (NoRoom if it does not fit). The copy on disk is loaded without waiting for
        its ETag check, which runs once it is loaded (``Revalidator.start``): an artifact overwritten
        while the server was down is swapped in then.
        """
        return self.start_load(target, v2_name(target), self._fetch_unverified, evicts=False)

    def _keep(self, operation) -> asyncio.Task:
        task = asyncio.ensure_future(operation)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _fetch(self, entry: Entry) -> ModelSettings:
        return await self.repository.settings_for(entry.target)

    async def _fetch_unverified(self, entry: Entry) -> ModelSettings:
        return await self.repository.settings_for(entry.target, unverified=True)

    async def _load(self, entry: Entry, prepare: Prepare, evicts: bool = True) -> None:
        try:
            async with entry.operation:
                # preloaded by MLServer at start-up (only those: any other name is the lifecycle's alone)
                model = await self.loader.registered(entry.name) if entry.pinned and not entry.hosted else None
                if model is not None:
                    entry.model, entry.etag = model, _extra(model).get("etag", "")
                else:
                    await self._load_artifact(entry, prepare, evicts)
                self.models.set_state(entry, State.READY)
                self.models.touch(entry, used=False)  # the newest: not a victim before its waiters use it
        except BaseException as error:
            self.models.remove(entry)
            self.drop_unused_versions()
            if isinstance(error, NoRoom):  # not a failure: its waiters load it again, making room
                entry.loaded.set_exception(error)
                return
            if isinstance(error, ARTIFACT_FAULTS) and not entry.hosted:
                self.failures.remember(entry.name, error)
            if isinstance(error, Exception):
                code = getattr(error, "sagemaker_code", type(error).__name__)
                logger.info("event=load-failed model=%s error=%s", entry.target, code)
                metrics().load_failures.labels(code=code).inc()
                entry.loaded.set_exception(error)
                return
            entry.loaded.cancel()
            raise
        self.failures.forget(entry.name)
        entry.loaded.set_result(None)
        logger.info("event=ready model=%s loaded=%d", entry.target, self.models.ready_count())
        try:
            await self.cache.drop_retired(self._version_in_use)  # before the trim: retired bytes go first
            await self.budgets.trim_disk()
        except Exception:
            logger.exception("event=disk-trim-failed")

    async def _load_artifact(self, entry: Entry, prepare: Prepare, evicts: bool) -> None:
        settings = await prepare(entry)  # download, unpack and check (or the disk cache)
        self.models.set_state(entry, State.LOADING)
        if not evicts and not self.budgets.within_count():
            raise NoRoom(f"no room for '{entry.target}' without unloading a model")
        if evicts:
            await self.budgets.make_room(entry)  # only now: a missing artifact unloads nothing
        started = self.clock()  # what a miss costs once the artifact is on disk: the runtime's load
        entry.model, entry.memory_bytes = await self.loader.load(entry.target, settings)
        entry.load_seconds = self.clock() - started
        entry.etag = settings.parameters.extra.get("etag", "")
        if not evicts:
            if not self.budgets.within_memory(WARM_MEMORY_SHARE):
                await self._unload_locked(entry, "memory")
                raise NoRoom(f"no room for '{entry.target}' in the memory limit without unloading a model")
            return
        if not await self.budgets.fits(entry) and (entry.hosted or not entry.pinned):
            alone = not any(e is not entry and e.state in (State.LOADING, State.READY) for e in self.models)
            await self._unload_locked(entry, "memory")
            error = ModelTooLarge(
                f"Model '{entry.target}' does not fit in the memory limit of {self.memory_limit} bytes "
                f"(measured with it loaded and nothing else left to unload)."
            )
            if alone and not entry.hosted:  # too large by itself: the artifact's fault
                self.failures.remember(entry.name, error)
            raise error

    # -- unloading --------------------------------------------------------------------------

    async def unload(self, entry: Entry, reason: str, only_if_idle: bool = False) -> bool:
        """Unload ``entry`` once its load or update under way ends; False if it was gone or failed to load.

        The unload runs as a task of its own: a caller that gives up (a gRPC deadline) does not
        leave it half done.
        """
        if not entry.loaded.done():
            await asyncio.wait((entry.loaded,))  # its load task may not hold the lock yet
        return await asyncio.shield(self._keep(self._unload_in_turn(entry, reason, only_if_idle)))

    async def _unload_in_turn(self, entry: Entry, reason: str, only_if_idle: bool) -> bool:
        async with entry.operation:
            if self.models.get(entry.name) is not entry or entry.state is not State.READY:
                return False
            if only_if_idle and (entry.in_flight or entry.waiting):
                return False  # used again while the budgets waited for its lock
            await self._unload_locked(entry, reason)
            return True

    async def _unload_idle(self, entry: Entry, reason: str) -> None:
        """The budgets' unload: ``entry`` was idle with its lock free when picked."""
        if await self.unload(entry, reason, only_if_idle=True):
            self.evicted.remember(entry.name)  # a victim of the budgets: loading it again soon is thrash

    async def _unload_locked(self, entry: Entry, reason: str) -> None:
        self.models.set_state(entry, State.UNLOADING)
        try:
            await entry.drained()
            await self.loader.unload(entry, reason)
        finally:
            self.models.remove(entry)
            self.drop_unused_versions()

    # -- artifact versions ------------------------------------------------------------------

    def drop_unused_versions(self) -> None:
        """Delete the replaced versions of artifacts (an overwrite in the store) that nothing uses any more."""
        if self.cache.has_retired():
            self._keep(self.cache.drop_retired(self._version_in_use))

    def _version_in_use(self, artifact: LocalArtifact) -> bool:
        """A load of its model may be reading it, or the loaded model is that version."""
        entry = self.models.get(v2_name(artifact.target))
        if entry is None:
            return False
        if entry.state in (State.FETCHING, State.LOADING) or entry.operation.locked() or entry.model is None:
            return True
        parameters = entry.model.settings.parameters
        return parameters is None or parameters.uri == artifact.folder  # the loaded model's own folder


def _retrieved(loaded: asyncio.Future) -> None:
    if not loaded.cancelled():
        loaded.exception()


def _extra(model: MLModel) -> dict:
    parameters = model.settings.parameters
    return (parameters.extra or {}) if parameters is not None else {}
