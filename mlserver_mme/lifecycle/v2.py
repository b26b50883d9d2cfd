"""V2 calls through the lifecycle, over REST and gRPC alike (MLServer's two servers share one set of handlers).

- Inference and metadata of a model under the prefix load it on first use, as SageMaker
  requests do, count it in flight (an unload waits for it) and refresh its place in the
  LRU order.
- Readiness reports the model's state and never loads it (as Triton's): ready only while
  it is loaded, so a monitor polling every name does not cycle models through memory.
- Repository ``load`` loads through the same single flight and budgets (a loaded model
  stays as it is: no second instance, no second download); ``unload`` waits for the
  model's requests in flight and its operation under way.
- Names of the ``mlserver start`` folder's models go to MLServer's own handlers, except
  the router's, which cannot be loaded again or unloaded (409). Any other name that is
  no prefix model answers 404 here, before MLServer makes metrics series for it.
"""

import contextlib
from typing import AsyncIterator, Awaitable, Callable, Iterable, Optional

from mlserver.errors import ModelNotFound

from ..errors import ProtectedModel, StreamingUnsupported
from ..naming import NotATargetPath, target_of
from . import ModelLifecycle
from .entries import State

Handler = Callable[..., Awaitable]


class V2Gate:
    def __init__(self, lifecycle: ModelLifecycle, folder_models: Iterable[str], router_name: str):
        self.lifecycle = lifecycle
        self.folder_models = frozenset(folder_models)  # served as MLServer serves them
        self.router_name = router_name

    def target(self, name: str) -> Optional[str]:
        """The target path of a prefix model's V2 name; None for any other name."""
        entry = self.lifecycle.models.get(name)
        if entry is not None:
            return None if entry.hosted else entry.target
        if name in self.folder_models:
            return None
        try:
            return target_of(name)
        except NotATargetPath:
            return None

    @contextlib.asynccontextmanager
    async def using(self, name: str) -> AsyncIterator[None]:
        """Around a V2 call on ``name``: its model loaded and counted in flight, if it is the lifecycle's."""
        entry = self.lifecycle.models.get(name)
        if entry is not None and entry.hosted:  # loaded by SageMaker's hosting contract, not by use
            if entry.state is not State.READY:
                raise ModelNotFound(name)
            entry = self.lifecycle.use(entry)
        else:
            target = self.target(name)
            if target is None:
                if name not in self.folder_models:
                    raise ModelNotFound(name)
                yield  # a model of the folder: MLServer's
                return
            entry = await self.lifecycle.acquire(target)
        try:
            yield
        finally:
            self.lifecycle.release(entry)

    async def ready(self, name: str, original: Callable[[], Awaitable[bool]]) -> bool:
        """Whether ``name`` is loaded now; nothing is fetched or loaded to answer."""
        entry = self.lifecycle.models.get(name)
        if entry is not None:
            return entry.state is State.READY
        if self.target(name) is None:
            if name not in self.folder_models:
                raise ModelNotFound(name)
            return await original()  # a model of the folder: MLServer's
        return await self.lifecycle.loader.registered(name) is not None  # preloaded at start-up, not used yet

    async def load(self, name: str, original: Handler) -> bool:
        self._refuse_router(name)
        target = self.target(name)
        if target is None:
            return await original(name)
        self.lifecycle.failures.forget(name)  # an explicit load tries again at once (a fixed artifact)
        self.lifecycle.release(await self.lifecycle.acquire(target))
        return True

    async def unload(self, name: str, original: Handler) -> bool:
        self._refuse_router(name)
        entry = self.lifecycle.models.get(name)
        if entry is None:
            target = self.target(name)
            if target is None:
                return await original(name)  # a model of the folder: MLServer's
            if await self.lifecycle.loader.registered(name) is None:
                raise ModelNotFound(name)
            # preloaded at start-up and not used yet: the lifecycle takes it, then unloads it in turn
            entry = await self.lifecycle.acquire(target)
            entry.release()
        if not await self.lifecycle.unload(entry, "request"):
            raise ModelNotFound(name)  # unloaded or failed meanwhile
        return True

    def refuse_stream(self, name: str) -> None:
        """Streaming inference is MLServer's, for the models of its folder (the router aside) only."""
        if name in self.folder_models and name != self.router_name:
            return
        if self.target(name) is None and self.lifecycle.models.get(name) is None:
            raise ModelNotFound(name)
        raise StreamingUnsupported(
            f"Model '{name}' does not stream: this server's models answer whole requests; use /infer or ModelInfer."
        )

    def _refuse_router(self, name: str) -> None:
        if name == self.router_name:
            raise ProtectedModel(f"Model '{name}' is the server's router: it is neither loaded again nor unloaded.")
