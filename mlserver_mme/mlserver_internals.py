"""Every use of MLServer internals, in one place.

MLServer 1.7 has no public hook for what the router needs: the model registry
(to find a loaded model and share it with V2) and the repository handlers (to
load one on demand), nor a way for a repository to tell the start-up listing from
an index listing. This module reaches them through attributes checked against
mlserver 1.7.x, pinned in pyproject.toml; ``check()`` runs at start-up and fails
with a clear message when they are not there.
"""

import sys
from typing import Tuple

import mlserver
from mlserver.cli import serve
from mlserver.handlers import ModelRepositoryHandlers
from mlserver.registry import MultiModelRegistry
from mlserver.rest.endpoints import ModelRepositoryEndpoints

SUPPORTED = "1.7."
LOAD_ROUTE = "/v2/repository/models/{model_name}/load"


class UnsupportedMLServer(RuntimeError):
    pass


def check() -> None:
    """Fail fast if this MLServer lacks what the rest of this module relies on."""
    problems = []
    if not mlserver.__version__.startswith(SUPPORTED):
        problems.append(f"mlserver {mlserver.__version__} is installed, {SUPPORTED}x is required")
    if not hasattr(serve, "load_settings"):
        problems.append("mlserver.cli.serve.load_settings is missing")
    for cls, attribute in ((ModelRepositoryEndpoints, "_handlers"), (ModelRepositoryHandlers, "_model_registry")):
        if attribute not in cls.__init__.__code__.co_names:
            problems.append(f"{cls.__name__} no longer sets {attribute}")
    if problems:
        raise UnsupportedMLServer("mlserver-mme cannot run on this MLServer: " + "; ".join(problems))


def is_startup_listing() -> bool:
    """True while ``mlserver start`` collects the models to load at start-up."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is serve.load_settings.__code__:
            return True
        frame = frame.f_back
    return False


def registry_handles(app) -> Tuple[MultiModelRegistry, ModelRepositoryHandlers]:
    """The model registry and repository handlers behind MLServer's REST app."""
    for route in app.routes:
        if getattr(route, "path", None) == LOAD_ROUTE:
            handlers = route.endpoint.__self__._handlers
            return handlers._model_registry, handlers
    raise UnsupportedMLServer(f"MLServer's REST app has no {LOAD_ROUTE} route")
