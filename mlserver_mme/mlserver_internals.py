"""Every use of MLServer internals, in one place.

MLServer 1.7 has no public hook for what the multi-model layer needs: the model
registry (to load models on demand and share them with V2), the REST app (to put
the SageMaker routes in front of it), the V2 data plane and repository handlers
(to send V2 calls through the lifecycle), and a way for a repository to tell the
start-up listing from an index listing. They are found by looking at who is
calling and at the registry's load hooks, checked against mlserver 1.7.x, pinned
in pyproject.toml; ``check()`` runs at start-up and fails with a clear message
when they are not there.
"""

import functools
import gc
import inspect
import logging
import sys
from dataclasses import dataclass
from typing import AsyncContextManager, Awaitable, Callable, List, Tuple

import grpc
import mlserver
from grpc import aio
from mlserver.cli import serve
from mlserver.cloudevents import CloudEventsMiddleware, CloudEventsTypes
from mlserver.grpc import GRPCServer
from mlserver.grpc import utils as grpc_utils
from mlserver.handlers import DataPlane, ModelRepositoryHandlers
from mlserver.registry import MultiModelRegistry
from mlserver.server import MLServer
from mlserver.settings import ModelSettings
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware

SUPPORTED = "1.7."


class UnsupportedMLServer(RuntimeError):
    pass


def check() -> None:
    """Fail fast if this MLServer lacks what the rest of this module relies on."""
    problems = []
    if not mlserver.__version__.startswith(SUPPORTED):
        problems.append(f"mlserver {mlserver.__version__} is installed, {SUPPORTED}x is required")
    if not hasattr(serve, "load_settings"):
        problems.append("mlserver.cli.serve.load_settings is missing")
    for method in ("load", "unload", "get_model", "get_models"):
        if not hasattr(MultiModelRegistry, method):
            problems.append(f"MultiModelRegistry.{method} is missing")
    routed = (
        (DataPlane, ("infer", "infer_stream", "model_ready", "model_metadata")),
        (ModelRepositoryHandlers, ("load", "unload")),
    )
    for owner, methods in routed:
        for method in methods:
            if "name" not in inspect.signature(getattr(owner, method, lambda: None)).parameters:
                problems.append(f"{owner.__name__}.{method}(name, ...) is missing")
    for owner, method, attribute in _GRPC_CHAIN:
        if attribute not in getattr(getattr(owner, method, None), "__code__", _NO_CODE).co_names:
            problems.append(f"{owner.__name__}.{method} no longer sets {attribute}")
    if not callable(getattr(CloudEventsMiddleware, "_get_headers", None)):
        problems.append("mlserver.cloudevents.CloudEventsMiddleware._get_headers is missing")
    if not isinstance(getattr(grpc_utils, "logger", None), logging.Logger):
        problems.append("mlserver.grpc.utils.logger is missing")
    if not callable(getattr(grpc_utils, "_grpc_status_code", None)):
        problems.append("mlserver.grpc.utils._grpc_status_code is missing")
    if not isinstance(getattr(grpc_utils, "STATUS_CODE_MAPPING", None), dict):
        problems.append("mlserver.grpc.utils.STATUS_CODE_MAPPING is missing")
    if problems:
        raise UnsupportedMLServer("mlserver-mme cannot run on this MLServer: " + "; ".join(problems))


def is_startup_listing() -> bool:
    """True while ``mlserver start`` collects the models to load at start-up."""
    return _caller_running(serve.load_settings.__code__) is not None


def loading_registry() -> MultiModelRegistry:
    """The registry loading the model whose ``load()`` calls this (MLServer keeps no other handle)."""
    frame = _caller_running(MultiModelRegistry.load.__code__)
    registry = frame.f_locals.get("self") if frame is not None else None
    if not isinstance(registry, MultiModelRegistry):
        raise UnsupportedMLServer("the SageMaker router must be loaded by MLServer's model registry")
    return registry


def rest_app(registry: MultiModelRegistry):
    """MLServer's REST (FastAPI) app."""
    return _rest_server(registry)._app


def _rest_server(registry: MultiModelRegistry):
    """MLServer's REST server: the server registers a load hook (adding custom handlers) that leads to it."""
    for hook in getattr(registry, "_on_model_load", []):
        rest_server = getattr(getattr(hook, "__self__", None), "_rest_server", None)
        app = getattr(rest_server, "_app", None)
        if app is not None and hasattr(app, "user_middleware"):
            return rest_server
    raise UnsupportedMLServer("MLServer's REST app cannot be found from its model registry")


def put_in_front(app, middleware_class, **options) -> None:
    """Make ``middleware_class`` the first ASGI middleware of a running Starlette app."""
    app.user_middleware.insert(0, Middleware(middleware_class, **options))
    app.middleware_stack = None  # Starlette rebuilds the stack, with it, on the next request


def _caller_running(code):
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is code:
            return frame
        frame = frame.f_back
    return None


@dataclass(frozen=True)
class MLServerParts:
    """The pieces of a running MLServer the multi-model layer works with."""

    registry: MultiModelRegistry
    repository: object  # the model repository MLServer serves (``MMERepository``)
    repository_handlers: ModelRepositoryHandlers  # V2 repository API, shared by REST and gRPC
    data_plane: DataPlane  # V2 inference API, shared by REST and gRPC
    rest_app: object


def mlserver_parts() -> MLServerParts:
    """MLServer's parts, found from the registry loading the model whose ``load()`` calls this."""
    registry = loading_registry()
    rest_server = _rest_server(registry)
    handlers = getattr(rest_server, "_model_repository_handlers", None)
    data_plane = getattr(rest_server, "_data_plane", None)
    if not isinstance(handlers, ModelRepositoryHandlers) or not isinstance(data_plane, DataPlane):
        raise UnsupportedMLServer("MLServer's REST server holds no repository handlers or data plane")
    return MLServerParts(registry, handlers._repository, handlers, data_plane, rest_server._app)


def route_v2_calls(
    parts: MLServerParts,
    around_model: Callable[[str], AsyncContextManager],
    ready: Callable[[str, Callable[[], Awaitable[bool]]], Awaitable[bool]],
    load: Callable[[str, Callable], Awaitable[bool]],
    unload: Callable[[str, Callable], Awaitable[bool]],
    refuse_stream: Callable[[str], None],
) -> None:
    """Send MLServer's V2 calls (REST and gRPC) through the multi-model layer.

    Inference and metadata of one model run inside ``around_model(name)``; readiness becomes
    ``ready(name, original)`` (``original()`` asks MLServer); the repository API's
    ``load(name)``/``unload(name)`` become ``load(name, original)``/``unload(name, original)``.
    Streaming inference (REST ``infer_stream``, gRPC ``ModelStreamInfer``) first passes
    ``refuse_stream(name)``, which raises for a model that is not to stream: before MLServer
    looks the name up or makes metrics for it, and before a REST stream's response starts.
    """
    data_plane = parts.data_plane
    for method in ("infer", "model_metadata"):
        setattr(data_plane, method, _around_model(getattr(data_plane, method), around_model))
    asked_ready = data_plane.model_ready
    ready_signature = inspect.signature(asked_ready)  # callers pass the name by position (REST) or keyword (gRPC)

    async def routed_ready(*args, **kwargs) -> bool:
        name = ready_signature.bind(*args, **kwargs).arguments["name"]
        return await ready(name, lambda: asked_ready(*args, **kwargs))

    data_plane.model_ready = routed_ready
    streaming = data_plane.infer_stream

    def gated_stream(payloads, name: str, version=None):  # not async: both callers call it, then iterate
        refuse_stream(name)
        return streaming(payloads, name, version)

    data_plane.infer_stream = gated_stream
    handlers = parts.repository_handlers
    original_load, original_unload = handlers.load, handlers.unload

    async def routed_load(name: str) -> bool:
        return await load(name, original_load)

    async def routed_unload(name: str) -> bool:
        return await unload(name, original_unload)

    handlers.load, handlers.unload = routed_load, routed_unload


def _around_model(call, around_model):
    signature = inspect.signature(call)  # callers pass the name by position (REST) or keyword (gRPC)

    @functools.wraps(call)
    async def wrapped(*args, **kwargs):
        async with around_model(signature.bind(*args, **kwargs).arguments["name"]):
            return await call(*args, **kwargs)

    return wrapped


def replace_grpc_handlers(registry: MultiModelRegistry, replace: Callable) -> set:
    """Pass the method handlers of MLServer's running gRPC server through ``replace(method, handler)``.

    MLServer creates its gRPC server in ``GRPCServer.start()``, before any model loads, with
    interceptors fixed at creation; ``grpc.aio`` takes no new one afterwards. A running
    ``grpc.aio`` server finds a call's handler by the method's full name in dictionaries: the one
    of methods registered with gRPC's core (``add_registered_method_handlers``, consulted first)
    and one per generic handler (``method_handlers_generic_handler``). Every entry of both is
    replaced here; the server's core holds them (``gc.get_referents`` lists what it holds). Returns
    the full names of the methods seen.
    """
    server = _grpc_server(registry)
    core = getattr(server, "_server", None)
    registered, generic = [], []
    for held in gc.get_referents(core) if core is not None else ():
        if _is_handler_table(held):
            registered.append(held)
        elif isinstance(held, list):
            tables = (getattr(handler, "_method_handlers", None) for handler in held)
            generic += [table for table in tables if _is_handler_table(table)]
    if not generic or (hasattr(server, "add_registered_method_handlers") and not registered):
        raise UnsupportedMLServer("the method handlers of MLServer's gRPC server cannot be found")
    seen = set()
    for table in registered + generic:
        for method, handler in list(table.items()):
            table[method] = replace(method, handler)
            seen.add(method)
    return seen


def _grpc_server(registry: MultiModelRegistry):
    """MLServer's ``grpc.aio`` server: the MLServer behind the registry's load hooks holds it."""
    for hook in getattr(registry, "_on_model_load", []):
        grpc_server = getattr(getattr(getattr(hook, "__self__", None), "_grpc_server", None), "_server", None)
        if isinstance(grpc_server, aio.Server):
            return grpc_server
    raise UnsupportedMLServer("MLServer's gRPC server cannot be found from its model registry")


def _is_handler_table(held) -> bool:
    return (
        isinstance(held, dict)
        and bool(held)
        and all(isinstance(key, str) and key.startswith("/") for key in held)
        and all(isinstance(handler, grpc.RpcMethodHandler) for handler in held.values())
    )


# What the gRPC server is reached through: (class, method, the attribute that method sets).
_GRPC_CHAIN = ((MLServer, "_create_servers", "_grpc_server"), (GRPCServer, "_create_server", "_server"))
_NO_CODE = (lambda: None).__code__


class _NoTraceForClientErrors(logging.Filter):
    """MLServer's gRPC handlers log every MLServerError with its traceback: a caller's mistake (a 4xx)
    keeps its one line, so made-up names cannot fill the log with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, mlserver.errors.MLServerError) and getattr(error, "status_code", 500) < 500:
            record.exc_info = record.exc_text = None
        return True


def quiet_grpc_client_errors() -> None:
    grpc_utils.logger.addFilter(_NoTraceForClientErrors())


def map_grpc_statuses(statuses: dict) -> None:
    """Add HTTP status -> gRPC status pairs to MLServer's mapping of its errors (others answer UNKNOWN)."""
    for http_status, grpc_status in statuses.items():
        grpc_utils.STATUS_CODE_MAPPING.setdefault(http_status, grpc_status)


def cloud_event_headers(parts: MLServerParts) -> Callable[[ModelSettings, str], List[Tuple[bytes, bytes]]]:
    """The CloudEvents headers MLServer's data plane adds to a V2 answer of a model with a request id.

    They come from its ``CloudEventsMiddleware`` (settings and namespace read at start-up), as ASGI
    pairs named as its REST answers name them (lower case).
    """
    middleware = CloudEventsMiddleware(parts.data_plane._settings)
    made: dict = {}  # model name -> its headers, the request id's values as None (the rest is fixed)

    def headers(model_settings: ModelSettings, request_id: str) -> List[Tuple[bytes, bytes]]:
        pattern = made.get(model_settings.name)
        if pattern is None:
            if len(made) >= 4096:
                made.clear()  # names come and go with models: a bound, rarely reached
            shown = middleware._get_headers(CloudEventsTypes.Response, model_settings, _PLACEHOLDER)
            pattern = made[model_settings.name] = [
                (name.lower().encode("latin-1"), None if value == _PLACEHOLDER else value.encode("latin-1"))
                for name, value in shown.items()
            ]
        if not request_id:  # MLServer names no id then (a gRPC request without one)
            return [(name, value) for name, value in pattern if value is not None]
        own = request_id.encode("latin-1")
        return [(name, own if value is None else value) for name, value in pattern]

    return headers


_PLACEHOLDER = "\x00request-id\x00"  # no settings value holds a NUL


def rest_app_middlewares(app) -> List[str]:
    """The class names of the middlewares MLServer put in its REST app (GZip, CORS, Prometheus, tracing...)."""
    return [middleware.cls.__name__ for middleware in app.user_middleware]


def rest_app_compresses(app) -> bool:
    """Whether MLServer's REST app gzips answers (``gzip_enabled``: its GZip middleware is in place)."""
    return any(middleware.cls is GZipMiddleware for middleware in app.user_middleware)


MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def shortcut_model_infer(registry: MultiModelRegistry, shortcut: Callable) -> None:
    """Put ``await shortcut(request, context)`` before MLServer's gRPC ``ModelInfer``: its answer when it
    gives one, else MLServer's handler's (MLServer's interceptors run around both)."""

    def replace(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method != MODEL_INFER:
            return handler
        if handler.unary_unary is None:
            raise UnsupportedMLServer(f"the gRPC method {method} is no longer unary")
        original = handler.unary_unary

        async def model_infer(request, context):
            answer = await shortcut(request, context)
            return answer if answer is not None else await original(request, context)

        return handler._replace(unary_unary=model_infer)

    if MODEL_INFER not in replace_grpc_handlers(registry, replace):
        raise UnsupportedMLServer("MLServer's gRPC server has no ModelInfer handler")


def grpc_status_of(error: mlserver.errors.MLServerError) -> grpc.StatusCode:
    """The status MLServer's gRPC handlers answer ``error`` with."""
    return grpc_utils._grpc_status_code(error)


def log_grpc_error(error: mlserver.errors.MLServerError) -> None:
    """Log ``error`` as MLServer's gRPC handlers do (``quiet_grpc_client_errors`` keeps a 4xx to one line)."""
    grpc_utils.logger.exception(error, exc_info=error)
