"""What can go wrong with a multi-model request, and how each protocol shows it.

The error classes below are the one table of error renderings. Each class sets:

- ``sagemaker_code`` and ``sagemaker_status``: SageMaker's runtime routes (``/invocations``);
- ``v2_status``: MLServer's V2 REST routes (MLServer's own handler answers it too, as the
  ``MLServerError`` status) and, through ``GRPC_STATUSES``, the gRPC status;
- ``original_status``, for ``ModelError`` only: the status the model itself answered, 4xx
  when the caller's payload is at fault, 5xx when the model is.

SageMaker's hosting contract (``/models...``) answers the model's own status: ``original_status``
where there is one, else ``v2_status``. The render functions at the end turn an error into
each protocol's answer; every route answers its errors through them.
"""

import re
from typing import List, NamedTuple, Optional, Tuple

import grpc
from mlserver.errors import MLServerError

MAX_DESCRIPTION = 500
_NATIVE_SOURCE = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")  # XGBoost's "[12:00:00] src/learner.cc:1001: "
_FOLDERS = re.compile(r"(?<![\w.:/])(?:/[\w.+-]+)+/")  # the folders of an absolute path


def describe(error: BaseException) -> str:
    """``Type: last line of the message``: enough to say what failed.

    Never a stack trace (XGBoost appends one to its messages) nor a server path:
    absolute paths keep their file name only.
    """
    text = str(error).split("Stack trace:", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = _FOLDERS.sub("", _NATIVE_SOURCE.sub("", lines[-1]))
    return f"{type(error).__name__}: {line[:MAX_DESCRIPTION]}"



# --- the table: one class per failure, its rendering in each protocol ------------------------------


class MMEError(MLServerError):
    """Anything unexpected (the base of the table: every other error overrides some of it)."""

    sagemaker_code, sagemaker_status, v2_status = "InternalFailure", 500, 500
    original_status: Optional[int] = None  # only for ModelError

    def __init__(self, message: str):
        super().__init__(message, self.v2_status)
        self.message = message


class InvalidRequest(MMEError):
    """The request breaks SageMaker's rules (a header too long, for instance)."""

    sagemaker_code, sagemaker_status, v2_status = "ValidationError", 400, 400


class BadTargetHeader(InvalidRequest):
    """The target model header is missing or is not a safe relative path."""


class ArtifactNotFound(MMEError):
    """Nothing under the model prefix at that path (or not readable)."""

    sagemaker_code, sagemaker_status, v2_status = "ValidationError", 400, 404


class StorageUnavailable(MMEError):
    """The model store could not be reached; retrying later may work."""

    sagemaker_code, sagemaker_status, v2_status = "ServiceUnavailable", 503, 503


class BrokenModel(MMEError):
    """The artifact cannot be unpacked or loaded."""

    sagemaker_code, sagemaker_status, v2_status, original_status = "ModelError", 424, 422, 500


class BadPayload(MMEError):
    """The request body cannot be read as the Content-Type it claims, or the model rejects it."""

    sagemaker_code, sagemaker_status, v2_status, original_status = "ModelError", 424, 400, 400


class UnsupportedContentType(BadPayload):
    original_status = v2_status = 415


class UnsupportedAccept(BadPayload):
    original_status = v2_status = 406


class ModelStillLoading(MMEError):
    """The model is still loading after the caller's wait; the load goes on (boto3 retries this)."""

    sagemaker_code, sagemaker_status, v2_status = "ModelNotReadyException", 429, 503


class ModelTooLarge(MMEError):
    """The model needs more memory than the limit leaves, even with every other model unloaded."""

    sagemaker_code, sagemaker_status, v2_status, original_status = "ModelError", 424, 507, 507


class BodyTimeout(MMEError):
    """The request body did not arrive within its deadline; what came of it is dropped."""

    sagemaker_code, sagemaker_status, v2_status = "ValidationError", 408, 408


class RequestTooLarge(MMEError):
    """The body or headers exceed the configured limits; the body is not read past the limit."""

    sagemaker_code, sagemaker_status, v2_status = "ValidationError", 413, 413


class HeadersTooLarge(RequestTooLarge):
    """Headers over the limit on a V2 route: 431, as HTTP has it (SageMaker's routes answer RequestTooLarge)."""

    v2_status = 431


class Unauthorized(MMEError):
    """A management route called without the configured bearer token."""

    sagemaker_code, sagemaker_status, v2_status = "UnauthorizedException", 401, 401


class SignatureRejected(MMEError):
    """SigV4 on: the request is not signed, or not rightly; ``code`` is the AWS error code that says which."""

    sagemaker_code, sagemaker_status, v2_status = "InvalidSignatureException", 403, 403

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.sagemaker_code = code


class AlreadyLoaded(MMEError):
    """Hosting contract: ``POST /models`` for a model that is loaded."""

    sagemaker_code, sagemaker_status, v2_status = "ValidationError", 409, 409


class ProtectedModel(MMEError):
    """A V2 repository call on the server's own router, which must stay as it is."""

    sagemaker_code, sagemaker_status, v2_status = "ValidationError", 409, 409


class StreamingUnsupported(MMEError):
    """V2 streaming inference on a model of this server's runtimes, which answer whole requests only."""

    sagemaker_code, sagemaker_status, v2_status = "ValidationError", 404, 404


class HostedModelNotFound(MMEError):
    """Hosting contract: a model name that is not loaded."""

    sagemaker_code, sagemaker_status, v2_status = "ValidationError", 404, 404


# The gRPC twin of every HTTP status an error above answers in any protocol. MLServer maps an
# error's ``v2_status`` through it (its own mapping knows 400, 404, 422 and 500 only: others would
# be UNKNOWN); the rest keep another runtime's MLServerError with such a status from UNKNOWN too.
GRPC_STATUSES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,  # the answer cannot be given as asked
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,  # the router: neither loaded again nor unloaded
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    424: grpc.StatusCode.FAILED_PRECONDITION,  # the model failed, as 422
    429: grpc.StatusCode.UNAVAILABLE,  # still loading: retry, as V2's 503 for the same error
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,  # still loading after the wait, or the store unreachable: retry
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,  # does not fit in the memory limit
}


# --- renderings ------------------------------------------------------------------------------------


class Answer(NamedTuple):
    """An HTTP error answer: status, JSON body, and headers beside Content-Type (ASGI byte pairs)."""

    status: int
    body: dict
    headers: List[Tuple[bytes, bytes]]


def sagemaker_answer(error: MMEError, request_id: str) -> Answer:
    """SageMaker's runtime error (``/invocations``; the admin token), so boto3 and the AWS CLI show its code."""
    body: dict = {"ErrorCode": error.sagemaker_code, "Message": error.message}
    if error.original_status is not None:
        side = "client" if error.original_status < 500 else "server"
        body = {
            "ErrorCode": f"{side.upper()}_ERROR_FROM_MODEL",
            "Message": f"Received {side} error ({error.original_status}) from primary with message "
            f'"{error.message}". See the server log for more information.',
            "OriginalStatusCode": error.original_status,
            "OriginalMessage": error.message,
            "LogStreamArn": "",
        }
    headers = [(b"x-amzn-errortype", error.sagemaker_code.encode()), (b"x-amzn-requestid", request_id.encode())]
    return Answer(error.sagemaker_status, body, headers)


def hosting_status(error: MMEError) -> int:
    """The model's own status: what it answered, else the error's plain HTTP status."""
    return error.v2_status if error.original_status is None else error.original_status


def hosting_answer(error: MMEError, request_id: Optional[str] = None) -> Answer:
    """The hosting contract's error (``/models...``): the model's own status and a plain message,
    never SageMaker's error shape, as SageMaker's front end wraps it in its own ModelError."""
    headers = [] if request_id is None else [(b"x-amzn-requestid", request_id.encode())]
    return Answer(hosting_status(error), {"message": error.message}, headers)


def v2_answer(error: MMEError) -> Answer:
    """MLServer's own error shape, which V2 clients (tritonclient among them) read."""
    return Answer(error.v2_status, {"error": error.message}, [])


def grpc_status(error: MMEError) -> grpc.StatusCode:
    """The gRPC status ``error`` answers: MLServer maps its ``v2_status`` (``status_code``)."""
    return GRPC_STATUSES[error.v2_status]
