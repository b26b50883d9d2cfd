"""What can go wrong with a multi-model request, and how each protocol shows it.

Each error is an ``MLServerError`` (so V2 clients get its status and message from
MLServer's own handler) and carries the SageMaker error code, status and, for
``ModelError``, the status the model itself answered (``original_status``): 4xx
when the caller's payload is at fault, 5xx when the model is.
"""

import re

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


class MMEError(MLServerError):
    sagemaker_code = "InternalFailure"
    sagemaker_status = 500
    v2_status = 500
    original_status = None  # only for ModelError

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


class Unauthorized(MMEError):
    """A management route called without the configured bearer token."""

    sagemaker_code, sagemaker_status, v2_status = "UnauthorizedException", 401, 401


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
