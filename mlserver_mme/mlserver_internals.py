"""Every use of MLServer internals, in one place.

MLServer 1.7 has no public hook for what the multi-model layer needs: the model
registry (to load models on demand and share them with V2), the REST app (to put
the SageMaker routes in front of it), and a way for a repository to tell the
start-up listing from an index listing. They are found by looking at who is
calling and at the registry's load hooks, checked against mlserver 1.7.x, pinned
in pyproject.toml; ``check()`` runs at start-up and fails with a clear message
when they are not there.
"""

import sys

import mlserver
from mlserver.cli import serve
from mlserver.registry import MultiModelRegistry
from starlette.middleware import Middleware

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
    """MLServer's REST (FastAPI) app: its server registers a load hook that adds custom handlers."""
    for hook in getattr(registry, "_on_model_load", []):
        rest_server = getattr(getattr(hook, "__self__", None), "_rest_server", None)
        app = getattr(rest_server, "_app", None)
        if app is not None and hasattr(app, "user_middleware"):
            return app
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
