"""SageMaker's hosting contract: SageMaker downloads artifacts and decides what is loaded.

A hosted model is loaded by ``POST /models`` and stays until ``DELETE /models/{name}``:
it is pinned (the server's own budgets never unload it). Over ``max_loaded_models``, or
over the memory limit once loaded, the load is refused with ``ModelTooLarge`` (507), and
SageMaker unloads other models. The folder was unpacked by SageMaker, not by our cache,
so it is checked before it is loaded.
"""

from typing import TYPE_CHECKING, Dict

from ..errors import AlreadyLoaded, HostedModelNotFound, ModelTooLarge
from ..naming import hosted_name
from .entries import Entry, State

if TYPE_CHECKING:
    from . import ModelLifecycle


class HostedModels:
    def __init__(self, lifecycle: "ModelLifecycle"):
        self.lifecycle = lifecycle

    async def load(self, model_name: str, folder: str) -> Entry:
        lifecycle = self.lifecycle
        name = hosted_name(model_name)
        if name in lifecycle.models:
            raise AlreadyLoaded(f"Model '{model_name}' is already loaded.")
        limit = lifecycle.settings.max_loaded_models
        if limit is not None and len(lifecycle.models) >= limit:
            raise ModelTooLarge(f"No room for model '{model_name}': {limit} models are loaded.")

        async def prepare(entry: Entry):
            checked = await lifecycle.repository.check_folder(model_name, folder)
            return lifecycle.repository.settings_for_folder(model_name, folder, name, checked=checked)

        # No await between the checks above and the entry taking its place: concurrent loads
        # of one name, or past the limit, cannot both pass.
        entry = lifecycle.start_load(model_name, name, prepare, pinned=True, hosted=True)
        await lifecycle.outcome(entry.loaded)
        return entry

    def listing(self) -> Dict[str, Entry]:
        """Loaded hosted models by SageMaker's model name."""
        return {e.target: e for e in self.lifecycle.models if e.hosted and e.state is State.READY}

    def acquire(self, model_name: str) -> Entry:
        entry = self.lifecycle.models.get(hosted_name(model_name))
        if entry is None or entry.state is not State.READY:
            raise HostedModelNotFound(f"Model '{model_name}' is not loaded.")
        return self.lifecycle.use(entry)

    async def unload(self, model_name: str) -> None:
        entry = self.lifecycle.models.get(hosted_name(model_name))
        if entry is None or entry.state is not State.READY:
            raise HostedModelNotFound(f"Model '{model_name}' is not loaded.")
        await self.lifecycle.unload(entry, "request")
