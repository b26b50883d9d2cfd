"""Loading models into MLServer's registry and unloading them, measured and logged.

The lifecycle decides when; this module does it. A failure of the runtime's load is
the model's (``BrokenModel``); its cause is kept for the log, not sent to clients.
"""

import logging
import time
from typing import Optional, Tuple

from mlserver import MLModel
from mlserver.errors import ModelNotFound
from mlserver.settings import ModelSettings

from ..errors import BrokenModel, MMEError, describe
from ..observability.memory import process_tree_memory, release_free_memory
from ..observability.metrics import metrics
from ..threads import in_io
from .entries import Entry

logger = logging.getLogger("mlserver.mme")


class RegistryLoader:
    def __init__(self, registry):
        self.registry = registry
        self._metrics = metrics()

    async def registered(self, name: str) -> Optional[MLModel]:
        """A ready model MLServer holds under ``name`` (one preloaded at start-up), or None."""
        try:
            model = await self.registry.get_model(name)
        except ModelNotFound:
            return None
        return model if model.ready else None

    async def load(self, target: str, settings: ModelSettings) -> Tuple[MLModel, int]:
        """Load ``settings`` into the registry: the model, and the growth of the server's memory."""
        before = process_tree_memory()
        started = time.perf_counter()
        try:
            # MLServer imports the runtime and calls its load(): any failure there is the model's
            await self.registry.load(settings)
            model = await self.registry.get_model(settings.name)
        except MMEError:
            raise
        except Exception as error:
            raise BrokenModel(f"The model '{target}' failed to load: {describe(error)}") from error
        elapsed = time.perf_counter() - started
        memory_bytes = max(0, process_tree_memory() - before)
        self._metrics.loading.observe(elapsed)
        self._metrics.model_memory.observe(memory_bytes)
        logger.info(
            "event=load model=%s name=%s load_ms=%.1f memory_bytes=%d",
            target, settings.name, elapsed * 1e3, memory_bytes,
        )
        return model, memory_bytes

    async def unload(self, entry: Entry, reason: str) -> None:
        started = time.perf_counter()
        try:
            await self.registry.unload(entry.name)
        except ModelNotFound:
            pass
        except Exception:
            logger.exception("event=unload-failed model=%s", entry.target)
        await in_io(release_free_memory)
        elapsed = time.perf_counter() - started
        self._metrics.unloading.observe(elapsed)
        self._metrics.evictions.labels(reason=reason).inc()
        logger.info(
            "event=evict reason=%s model=%s memory_bytes=%d idle_s=%.1f unload_ms=%.1f",
            reason, entry.target, entry.memory_bytes, time.monotonic() - entry.last_used, elapsed * 1e3,
        )
