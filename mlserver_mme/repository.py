"""The MLServer model repository over a model prefix.

MLServer calls it for ``/v2/repository/index`` (``list``) and for every load,
V2 or SageMaker (``find``). ``find`` fetches and unpacks the artifact through the
disk cache and returns settings pointing at the unpacked folder: the runtime the
artifact's own ``model-settings.json`` names, else the XGBoost runtime.

Models found in the folder passed to ``mlserver start`` (the SageMaker router)
are served as MLServer serves them. At start-up MLServer loads everything the
first ``list()`` returns, so that first listing holds only those (see
``mlserver_internals.is_startup_listing``); later listings add every artifact
under the prefix, by V2 name.
"""

import asyncio
import json
import os
from typing import List

from mlserver.errors import ModelNotFound
from mlserver.repository import SchemalessModelRepository
from mlserver.settings import ModelParameters, ModelSettings

from . import mlserver_internals
from .cache import ArtifactCache
from .config import load_settings
from .errors import BrokenModel, StorageUnavailable
from .naming import InvalidTargetModel, target_of, v2_name
from .store import StoreUnavailable, open_store

XGBOOST_RUNTIME = "mlserver_mme.runtimes.xgboost.XGBoostModel"
OWN_SETTINGS = "model-settings.json"


class MMERepository(SchemalessModelRepository):
    def __init__(self, root: str, **settings_args):
        super().__init__(root)
        self.settings = load_settings(root, **settings_args)
        self.store = open_store(self.settings.model_prefix)
        self.cache = ArtifactCache(
            self.store, self.settings.model_prefix, self.settings.cache_dir, self.settings.max_unpacked_bytes
        )
        self._startup = mlserver_internals.is_startup_listing()
        if not self._startup:
            self.cache.remove_partials()

    async def list(self) -> List[ModelSettings]:
        folder_models = await super().list()
        if self._startup:
            return folder_models
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
        return [await self.settings_for(target)]

    async def settings_for(self, target: str) -> ModelSettings:
        """Fetch ``target`` (once) and describe how MLServer loads it."""
        artifact = await self.cache.fetch(target)
        name = v2_name(target)
        own_settings = os.path.join(artifact.folder, OWN_SETTINGS)
        if os.path.isfile(own_settings):
            # Never import code from inside an artifact: the runtime must be installed.
            settings = _declared_settings(own_settings, target, name)
        else:
            settings = ModelSettings(name=name, implementation=XGBOOST_RUNTIME)
        parameters = settings.parameters or ModelParameters()
        settings.parameters = parameters.model_copy(
            update={
                "uri": artifact.folder,
                "version": None,
                "extra": {
                    **(parameters.extra or {}),
                    "target_model": target,
                    "etag": artifact.etag,
                    "allow_pickle": self.settings.allow_pickle,
                    "nthread": self.settings.xgboost_nthread,
                },
            }
        )
        return settings

    def _index_entry(self, target: str) -> ModelSettings:
        return ModelSettings(
            name=v2_name(target),
            implementation=XGBOOST_RUNTIME,
            parameters=ModelParameters(extra={"target_model": target}),
        )


def _declared_settings(path: str, target: str, name: str) -> ModelSettings:
    try:
        with open(path) as file:
            declared = json.load(file)
        return ModelSettings.model_validate({**declared, "name": name})
    except (ValueError, TypeError) as error:  # bad JSON, or pydantic's ValidationError
        raise BrokenModel(f"The {OWN_SETTINGS} of '{target}' is not valid: {error}") from None
