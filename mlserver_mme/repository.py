"""The MLServer model repository over a model prefix.

MLServer calls ``list`` for ``/v2/repository/index`` and ``find`` for V2 loads;
the lifecycle calls ``settings_for`` for SageMaker loads. Both fetch and unpack
the artifact through the disk cache and describe a model whose ``uri`` is the
unpacked folder, served by the runtime the artifact's own ``model-settings.json``
names, else by the XGBoost runtime.

Models found in the folder passed to ``mlserver start`` (the SageMaker router)
are served as MLServer serves them. At start-up MLServer loads everything the
first ``list()`` returns, so that listing holds only those and the preloaded
models (see ``mlserver_internals.is_startup_listing``); later listings add every
artifact under the prefix, by V2 name.
"""

import asyncio
import json
import os
import shutil
from typing import List, Optional

from mlserver.errors import ModelNotFound
from mlserver.repository import SchemalessModelRepository
from mlserver.settings import ModelParameters, ModelSettings

from . import mlserver_internals
from .cache import ArtifactCache
from .config import load_settings, preload_targets
from .errors import BrokenModel, StorageUnavailable
from .memory import parse_size
from .naming import InvalidTargetModel, target_of, v2_name
from .store import StoreUnavailable, open_store

XGBOOST_RUNTIME = "mlserver_mme.runtimes.xgboost.XGBoostModel"
OWN_SETTINGS = "model-settings.json"


_serving: Optional["MMERepository"] = None


def serving_repository() -> "MMERepository":
    """The repository of the running server (not the one ``mlserver start`` lists start-up models with)."""
    if _serving is None:
        raise RuntimeError(
            "settings.json must set model_repository_implementation to mlserver_mme.repository.MMERepository"
        )
    return _serving


class MMERepository(SchemalessModelRepository):
    def __init__(self, root: str, **settings_args):
        global _serving
        super().__init__(root)
        self.settings = load_settings(root, **settings_args)
        self.store = open_store(self.settings.model_prefix)
        disk_limit = self.settings.disk_limit
        os.makedirs(self.settings.cache_dir, exist_ok=True)
        self.cache = ArtifactCache(
            self.store,
            self.settings.model_prefix,
            self.settings.cache_dir,
            self.settings.max_unpacked_bytes,
            parse_size(disk_limit, shutil.disk_usage(self.settings.cache_dir).total) if disk_limit else None,
        )
        self.lifecycle = None  # set by the router once it is loaded
        # Validating ModelSettings reads the whole environment (pydantic-settings): ~1.5 ms each.
        # Models are described by copying one validated template instead.
        self._xgboost_template = ModelSettings(name="template", implementation=XGBOOST_RUNTIME, parameters={})
        self._startup = mlserver_internals.is_startup_listing()
        if not self._startup:
            self.cache.open()
            _serving = self

    async def list(self) -> List[ModelSettings]:
        folder_models = await super().list()
        if self._startup:
            # Fetched now, loaded by MLServer with the router, never unloaded (lifecycle.pinned).
            return folder_models + [await self.settings_for(target) for target in preload_targets(self.settings)]
        try:
            targets = await asyncio.to_thread(self.store.list)
        except StoreUnavailable as error:
            raise StorageUnavailable(f"The model store is unavailable: {error}") from None
        return folder_models + [self._index_entry(target) for target in targets]

    async def find(self, name: str) -> List[ModelSettings]:
        folder_models = [settings for settings in await super().list() if settings.name == name]
        if folder_models:
            return folder_models
        try:
            target = target_of(name)
        except InvalidTargetModel:
            raise ModelNotFound(name) from None
        settings = await self.settings_for(target)
        if self.lifecycle is not None:  # a V2 load: make room first, count it once loaded
            await self.lifecycle.before_external_load()
            asyncio.ensure_future(self.lifecycle.after_external_load(target, name))
        return [settings]

    async def settings_for(self, target: str) -> ModelSettings:
        """Fetch ``target`` (once) and describe how MLServer loads it."""
        artifact = await self.cache.fetch(target)
        return self.settings_for_folder(target, artifact.folder, v2_name(target), etag=artifact.etag)

    def settings_for_folder(self, target: str, folder: str, name: str, etag: str = "") -> ModelSettings:
        """Describe the unpacked model in ``folder`` under the MLServer ``name``."""
        own_settings = os.path.join(folder, OWN_SETTINGS)
        if os.path.isfile(own_settings):
            # Never import code from inside an artifact: the runtime must be installed.
            template = _declared_settings(own_settings, target)
        else:
            template = self._xgboost_template
        return _described(
            template,
            target,
            name,
            uri=folder,
            etag=etag,
            allow_pickle=self.settings.allow_pickle,
            nthread=self.settings.xgboost_nthread,
        )

    def _index_entry(self, target: str) -> ModelSettings:
        return _described(self._xgboost_template, target, v2_name(target))


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


def _declared_settings(path: str, target: str) -> ModelSettings:
    try:
        with open(path) as file:
            declared = json.load(file)
        return ModelSettings.model_validate(declared)
    except (ValueError, TypeError) as error:  # bad JSON, or pydantic's ValidationError
        raise BrokenModel(f"The {OWN_SETTINGS} of '{target}' is not valid: {error}") from None
