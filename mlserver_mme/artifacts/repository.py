"""The MLServer model repository over a model prefix.

MLServer calls ``list`` for ``/v2/repository/index`` (and ``find`` for V2 loads of
the folder's models); the lifecycle calls ``settings_for`` for every load of a
prefix model, whichever protocol asked for it. Both fetch and unpack
the artifact through the disk cache and describe a model whose ``uri`` is the
unpacked folder, served by the runtime the artifact's own ``model-settings.json``
names, else by the XGBoost runtime.

Models found in the folder passed to ``mlserver start`` (the SageMaker router)
are served as MLServer serves them. At start-up MLServer loads everything the
first ``list()`` returns, so that listing holds only those and the preloaded
models (see ``mlserver_internals.is_startup_listing``); later listings add every
artifact under the prefix, by V2 name.
"""

import logging
import os
import shutil
import time
from typing import List, Optional

import pydantic
from mlserver.errors import ModelNotFound
from mlserver.repository import SchemalessModelRepository
from mlserver.settings import ModelParameters, ModelSettings

from .. import mlserver_internals
from ..config import MMESettings, comma_list, load_settings, preload_targets
from ..errors import BrokenModel, StorageUnavailable
from ..folders import FolderInUse, lock_folder, private_folder
from ..lifecycle.warm_start import recorded_prefix
from ..naming import NotATargetPath, target_of, v2_name
from ..observability.memory import parse_size, total_memory
from ..observability.metrics import metrics
from ..runtimes.xgboost import GTIL_READING, check_model_file, find_model_file, warm_up_check
from ..threads import in_io
from . import isolation
from .cache import ArtifactCache
from .declared_settings import OWN_SETTINGS, XGBOOST_RUNTIME, read_declared
from .fair_slots import FairSlots, tenant_of
from .store import StoreUnreachable, open_store

logger = logging.getLogger("mlserver.mme")


class MMERepository(SchemalessModelRepository):
    def __init__(self, root: str, **settings_args):
        super().__init__(root)
        self.settings = load_settings(root, **settings_args)
        self.store = open_store(self.settings.model_prefix)
        self.allowed_runtimes = comma_list(self.settings.allowed_runtimes)
        memory = parse_size(self.settings.validation_memory)
        if self.settings.memory_limit:  # a model the check lets through must fit in what the server may hold
            memory = min(memory, parse_size(self.settings.memory_limit, total_memory()))
        seconds = self.settings.validation_seconds
        self.check_limits = isolation.Limits(memory_bytes=memory, cpu_seconds=seconds, wall_seconds=2.0 * seconds)
        # each check may take its memory limit; tenants (top-level folders) take turns for the slots
        self._check_slots = FairSlots(os.cpu_count() or 1)
        # The fork server imports, once and in the background, the XGBoost check and what the main
        # script imports: each check child runs `mlserver`'s script again (Python before 3.13 ignores
        # "__main__" in a fork server's preload list, CPython issue 126631), so it must find
        # mlserver.cli imported already.
        isolation.start(
            ["__main__", "mlserver.cli", check_model_file.__module__],
            limits=self.check_limits, warm_up=warm_up_check,
            spares=self.settings.check_spares,
        )
        disk_limit = self.settings.disk_limit
        self.settings = _own_cache_dir(self.settings)
        self.cache = ArtifactCache(
            self.store,
            self.settings.model_prefix,
            self.settings.cache_dir,
            self.settings.max_unpacked_bytes,
            parse_size(disk_limit, shutil.disk_usage(self.settings.cache_dir).total) if disk_limit else None,
            check=self.check_folder,
        )
        # Validating ModelSettings reads the whole environment (pydantic-settings): ~1.5 ms each.
        # Models are described by copying one validated template instead.
        self._xgboost_template = ModelSettings(name="template", implementation=XGBOOST_RUNTIME, parameters={})
        self._startup = mlserver_internals.is_startup_listing()
        if not self._startup:
            self.cache.open()

    async def list(self) -> List[ModelSettings]:
        folder_models = await super().list()
        if self._startup:
            # Fetched now, loaded by MLServer with the router, never unloaded (lifecycle.pinned).
            return folder_models + [await self.settings_for(target) for target in preload_targets(self.settings)]
        try:
            targets = await in_io(self.store.list)
        except StoreUnreachable as error:
            raise StorageUnavailable(f"The model store is unavailable: {error}") from None
        return folder_models + [self._index_entry(target) for target in targets]

    async def find(self, name: str) -> List[ModelSettings]:
        folder_models = [settings for settings in await super().list() if settings.name == name]
        if folder_models:
            return folder_models
        try:
            target = target_of(name)
        except NotATargetPath:
            raise ModelNotFound(name) from None
        return [await self.settings_for(target)]

    async def folder_model_names(self) -> List[str]:
        """The models of the folder passed to ``mlserver start``: served as MLServer serves them."""
        return [settings.name for settings in await super().list()]

    async def settings_for(self, target: str, unverified: bool = False) -> ModelSettings:
        """Fetch ``target`` (once) and describe how MLServer loads it (``unverified``: see ``ArtifactCache.fetch``)."""
        artifact = await self.cache.fetch(target, unverified=unverified)
        return self.settings_for_folder(
            target, artifact.folder, v2_name(target), etag=artifact.etag, checked=artifact.checked
        )

    async def check_folder(self, target: str, folder: str) -> dict:
        """Refuse an unpacked artifact that may not or cannot be served (BrokenModel).

        Runs before an artifact is published to the cache, and before a hosted model is loaded.
        The declared runtime must be allowed; an XGBoost model must load and predict in an
        isolated child (``isolation``), since a malformed file can crash the process parsing it.
        Checks wait for a slot (one per CPU) before they take a thread, so checks queued behind
        slow ones hold no thread that downloads and loads need. Returns what the check found,
        which the load then need not find again (``settings_for_folder``).
        """
        async with self._check_slots.slot(tenant_of(target)):
            return await in_io(self._check_folder, target, folder)

    def _check_folder(self, target: str, folder: str) -> dict:
        declared = self._declared(target, folder)
        if declared is not None and declared["implementation"] != XGBOOST_RUNTIME:
            return {}  # an allowed runtime reads its own files
        path = find_model_file(folder)
        started = time.perf_counter()
        try:
            found = isolation.run(check_model_file, path, self.settings.allow_pickle, limits=self.check_limits)
        except isolation.IsolatedFailure as failure:
            raise BrokenModel(f"The model '{target}' failed its load check: {failure.message}") from None
        elapsed = time.perf_counter() - started
        metrics().checking.observe(elapsed)
        logger.info(
            "event=check model=%s check_ms=%.1f warm=%s format=%s saved_by=%s compared_with=%s",
            target, elapsed * 1e3, "yes" if found.get("warm") else "no", found["format"], found["saved_by"],
            found["compared_with"].replace(" ", "_"),
        )
        return found

    def settings_for_folder(
        self, target: str, folder: str, name: str, etag: str = "", checked: Optional[dict] = None
    ) -> ModelSettings:
        """Describe the unpacked model in ``folder`` under the MLServer ``name``.

        ``checked`` is what the folder's check found (``check_folder``), if at hand.
        """
        declared = self._declared(target, folder)
        template = self._xgboost_template if declared is None else _validated(declared, target)
        found = checked or {}
        proven = {}
        if isinstance(found.get("gtil"), bool) and found.get("gtil_reading") == GTIL_READING:
            proven["gtil_exact"] = found["gtil"]
        if isinstance(found.get("visits_per_row"), int):
            proven["visits_per_row"] = found["visits_per_row"]
        return _described(
            template,
            target,
            name,
            uri=folder,
            etag=etag,
            allow_pickle=self.settings.allow_pickle,
            nthread=self.settings.xgboost_nthread,
            **proven,
        )

    def _declared(self, target: str, folder: str) -> Optional[dict]:
        """What the artifact's own settings file may say, or None without one."""
        own_settings = os.path.join(folder, OWN_SETTINGS)
        if not os.path.isfile(own_settings):
            return None
        return read_declared(own_settings, target, self.allowed_runtimes)

    def _index_entry(self, target: str) -> ModelSettings:
        return _described(self._xgboost_template, target, v2_name(target))


MAX_DEFAULT_CACHE_DIRS = 16  # servers of one user on one host with the default cache folder


def _own_cache_dir(settings: MMESettings) -> MMESettings:
    """``settings`` with a cache folder this process alone uses, made private and locked.

    A folder set in ``MLSERVER_MME_CACHE_DIR`` (or settings.json) that another server holds is refused
    (FolderInUse). With the default folder, servers started side by side each take one of the default,
    ``<default>-2``, ``<default>-3``...: the first free one that recorded this server's model prefix
    (``hot-set.json``), else the first free one that recorded none, else the first free one. A server
    restarted thus finds its own models and record again, whatever order servers restart in.
    """
    if "cache_dir" in settings.model_fields_set:
        private_folder(settings.cache_dir, "MLSERVER_MME_CACHE_DIR")
        lock_folder(settings.cache_dir, "MLSERVER_MME_CACHE_DIR")
        return settings
    default = settings.cache_dir
    candidates = [default] + [f"{default}-{number}" for number in range(2, MAX_DEFAULT_CACHE_DIRS + 1)]

    def preference(folder: str) -> int:
        prefix = recorded_prefix(folder)
        return 0 if prefix == settings.model_prefix else 1 if prefix is None else 2

    for folder in sorted(candidates, key=preference):  # sorted() keeps the numeric order among equals
        private_folder(folder, "MLSERVER_MME_CACHE_DIR")
        try:
            lock_folder(folder, "MLSERVER_MME_CACHE_DIR")
        except FolderInUse:
            continue
        if folder == default:
            return settings
        logger.info("event=cache-dir-in-use default=%s using=%s", default, folder)
        return settings.model_copy(update={"cache_dir": folder})
    lock_folder(default, "MLSERVER_MME_CACHE_DIR")  # all taken: raises FolderInUse, naming the default
    return settings


def _described(template: ModelSettings, target: str, name: str, uri: Optional[str] = None, **extra) -> ModelSettings:
    """``template`` named ``name`` for ``target``, its parameters completed (copies, no re-validation)."""
    parameters = template.parameters or ModelParameters()
    return template.model_copy(
        update={
            "name": name,
            "parameters": parameters.model_copy(
                update={"uri": uri, "version": None, "extra": {**(parameters.extra or {}), "target_model": target, **extra}}
            ),
        }
    )


def _validated(declared: dict, target: str) -> ModelSettings:
    try:
        return ModelSettings.model_validate(declared)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise BrokenModel(f"The {OWN_SETTINGS} of '{target}' is not valid: {where}: {first['msg']}") from None
