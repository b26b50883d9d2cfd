"""The admin token on MLServer's gRPC repository calls.

With ``MLSERVER_MME_ADMIN_TOKEN`` set, the REST repository routes need
``Authorization: Bearer <token>``; MLServer's gRPC port offers the same calls
(``RepositoryIndex``, ``RepositoryModelLoad``, ``RepositoryModelUnload``, on
both ``inference.GRPCInferenceService`` and the older
``inference.model_repository.ModelRepositoryService``). Here they need the same
token as ``authorization: Bearer <token>`` metadata and are refused with
UNAUTHENTICATED without it, before MLServer sees the request. Inference,
metadata and health calls stay open, as they are over REST.

MLServer creates and starts its gRPC server before it loads any model, with no
way to add an interceptor later; ``mlserver_internals.replace_grpc_handlers``
swaps the method handlers of the running server for guarded ones instead.
"""

import hmac

import grpc

from .. import mlserver_internals
from ..config import MMESettings
from ..errors import Unauthorized, grpc_status

SERVICES = ("inference.GRPCInferenceService", "inference.model_repository.ModelRepositoryService")
GUARDED_METHODS = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
GUARDED = frozenset(f"/{service}/{method}" for service in SERVICES for method in GUARDED_METHODS)


class RepositoryGuard:
    """Replaces the handler of each guarded method by one that checks the token first."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def authorized(self, metadata) -> bool:
        presented = [value for key, value in metadata or () if key == "authorization"]
        if len(presented) != 1 or not isinstance(presented[0], str):
            return False
        return hmac.compare_digest(presented[0].encode(), self._expected)

    def __call__(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method not in GUARDED:
            return handler
        if handler.unary_unary is None:
            raise mlserver_internals.UnsupportedMLServer(f"the gRPC method {method} is no longer unary")
        behaviour = handler.unary_unary

        async def guarded(request, context):
            if not self.authorized(context.invocation_metadata()):
                error = Unauthorized("This call needs the server's admin bearer token.")
                await context.abort(grpc_status(error), error.message)
            return await behaviour(request, context)

        return handler._replace(unary_unary=guarded)


def guard_repository_calls(registry, settings: MMESettings) -> None:
    """With an admin token set, make MLServer's gRPC repository calls need it; fail if one cannot be."""
    if not settings.admin_token:
        return
    replaced = mlserver_internals.replace_grpc_handlers(registry, RepositoryGuard(settings.admin_token))
    missing = GUARDED - replaced
    if missing:
        raise mlserver_internals.UnsupportedMLServer(
            "the admin token cannot guard these gRPC calls: " + ", ".join(sorted(missing))
        )
