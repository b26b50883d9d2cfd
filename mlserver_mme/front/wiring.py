"""Start-up wiring: the MLServer model that puts the multi-model layer in front of MLServer.

``SageMakerRouter`` is loaded at start-up from ``model-settings/model-settings.json``
(as ``mlserver_mme.router.SageMakerRouter``); it must run in the main process
(``parallel_workers: 0`` in that file). Its load checks the MLServer it runs in,
makes the lifecycle over the repository, routes V2 calls (REST and gRPC) through
it, guards the gRPC repository calls, and puts the V2 compatibility (with the V2 fast path) and
SageMaker middlewares first in MLServer's REST app.
"""

import logging
from typing import Optional

from mlserver import MLModel

from .. import mlserver_internals
from ..artifacts.repository import MMERepository
from ..config import MMESettings
from ..errors import GRPC_STATUSES
from ..lifecycle import ModelLifecycle
from ..lifecycle.v2 import V2Gate
from .grpc_guard import guard_repository_calls
from .offload import BatchPool
from .sagemaker import SageMakerMiddleware, new_request_id
from .v2_compat import V2CompatMiddleware
from .v2_fast import FastV2
from .v2_fast_grpc import FastModelInfer

logger = logging.getLogger("mlserver.mme")

# MLServer's REST middlewares the fast path stands in for: it gzips as GZipMiddleware does, and its requests
# are counted in the per-model metrics instead of the REST metrics' (docs/protocols.md)
HANDLED = frozenset({"GZipMiddleware", "PrometheusMiddleware", "V2CompatMiddleware", "SageMakerMiddleware"})


class SageMakerRouter(MLModel):
    async def load(self) -> bool:
        mlserver_internals.check()
        parts = mlserver_internals.mlserver_parts()
        repository = parts.repository
        if not isinstance(repository, MMERepository):
            raise RuntimeError(
                "settings.json must set model_repository_implementation to mlserver_mme.repository.MMERepository"
            )
        folder_models = await repository.folder_model_names()
        lifecycle = ModelLifecycle(parts.registry, repository, repository.settings, reserved_names=folder_models)
        lifecycle.hot_set.start(warm_up=repository.settings.warm_restart)
        gate = V2Gate(lifecycle, folder_models, router_name=self.name)
        mlserver_internals.route_v2_calls(parts, gate.using, gate.ready, gate.load, gate.unload, gate.refuse_stream)
        mlserver_internals.map_grpc_statuses(GRPC_STATUSES)
        mlserver_internals.quiet_grpc_client_errors()
        guard_repository_calls(parts.registry, repository.settings)
        settings = repository.settings
        fast = fast_paths(parts, lifecycle, gate, settings) if settings.v2_fast_path else None
        mlserver_internals.put_in_front(parts.rest_app, V2CompatMiddleware, settings=settings, fast=fast)
        mlserver_internals.put_in_front(
            parts.rest_app, SageMakerMiddleware, lifecycle=lifecycle, settings=repository.settings
        )
        return True


def fast_paths(
    parts: mlserver_internals.MLServerParts, lifecycle: ModelLifecycle, gate: V2Gate, settings: MMESettings
) -> Optional[FastV2]:
    """The V2 fast paths: gRPC ModelInfer's put in place here, REST's returned for V2CompatMiddleware.

    Both share one batch pool (one thread per CPU) and MLServer's CloudEvents headers. REST's is None
    when MLServer's app has middlewares the fast path would skip, other than GZip (which it applies as
    MLServer does) and the REST metrics (documented): CORS (``cors_settings``) or tracing
    (``tracing_server``) then keep every V2 REST request on MLServer's path.
    """
    batches = BatchPool()
    cloud_events = mlserver_internals.cloud_event_headers(parts)
    top_k = settings.per_model_metrics_top_k
    shortcut = FastModelInfer(
        lifecycle, gate, top_k, cloud_events, mlserver_internals.grpc_status_of, mlserver_internals.log_grpc_error,
        batches,
    )
    mlserver_internals.shortcut_model_infer(parts.registry, shortcut)
    skipped = [name for name in mlserver_internals.rest_app_middlewares(parts.rest_app) if name not in HANDLED]
    if skipped:
        logger.info("event=v2-fast-path-rest-off reason=%s (gRPC's stays)", ",".join(skipped))
        return None
    gzip = mlserver_internals.rest_app_compresses(parts.rest_app)
    return FastV2(lifecycle, gate, top_k, cloud_events, gzip=gzip, new_id=new_request_id, batches=batches)
