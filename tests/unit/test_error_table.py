"""Every error of ``mlserver_mme.errors`` as each route family renders it, in process (no server)."""

import asyncio
import inspect
import json

import grpc
import pytest
from mlserver.grpc import utils as grpc_utils

from mlserver_mme import errors
from mlserver_mme.config import MMESettings
from mlserver_mme.errors import (
    GRPC_STATUSES,
    BadPayload,
    MMEError,
    ModelStillLoading,
    grpc_status,
    hosting_answer,
    sagemaker_answer,
    v2_answer,
)
from mlserver_mme.front.asgi import respond_json
from mlserver_mme.front.hosting import HostingRoutes
from mlserver_mme.front.sagemaker import SageMakerMiddleware
from mlserver_mme.front.v2_compat import V2CompatMiddleware

MESSAGE = "what went wrong"
REQUEST_ID = "0123abcd-0000-0000-0000-000000000000"
MODEL_ERROR_FIELDS = {"ErrorCode", "Message", "OriginalStatusCode", "OriginalMessage", "LogStreamArn"}

# class: (SageMaker code, SageMaker status, OriginalStatusCode, hosting status, V2 status, gRPC status),
# as the README's Errors table documents them.
EXPECTED = {
    "MMEError": ("InternalFailure", 500, None, 500, 500, grpc.StatusCode.INTERNAL),
    "InvalidRequest": ("ValidationError", 400, None, 400, 400, grpc.StatusCode.INVALID_ARGUMENT),
    "BadTargetHeader": ("ValidationError", 400, None, 400, 400, grpc.StatusCode.INVALID_ARGUMENT),
    "ArtifactNotFound": ("ValidationError", 400, None, 404, 404, grpc.StatusCode.NOT_FOUND),
    "StorageUnavailable": ("ServiceUnavailable", 503, None, 503, 503, grpc.StatusCode.UNAVAILABLE),
    "BrokenModel": ("ModelError", 424, 500, 500, 422, grpc.StatusCode.FAILED_PRECONDITION),
    "BadPayload": ("ModelError", 424, 400, 400, 400, grpc.StatusCode.INVALID_ARGUMENT),
    "UnsupportedContentType": ("ModelError", 424, 415, 415, 415, grpc.StatusCode.INVALID_ARGUMENT),
    "UnsupportedAccept": ("ModelError", 424, 406, 406, 406, grpc.StatusCode.INVALID_ARGUMENT),
    "ModelStillLoading": ("ModelNotReadyException", 429, None, 503, 503, grpc.StatusCode.UNAVAILABLE),
    "ModelTooLarge": ("ModelError", 424, 507, 507, 507, grpc.StatusCode.RESOURCE_EXHAUSTED),
    "BodyTimeout": ("ValidationError", 408, None, 408, 408, grpc.StatusCode.DEADLINE_EXCEEDED),
    "RequestTooLarge": ("ValidationError", 413, None, 413, 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    "HeadersTooLarge": ("ValidationError", 413, None, 431, 431, grpc.StatusCode.RESOURCE_EXHAUSTED),
    "Unauthorized": ("UnauthorizedException", 401, None, 401, 401, grpc.StatusCode.UNAUTHENTICATED),
    "SignatureRejected": ("InvalidSignatureException", 403, None, 403, 403, grpc.StatusCode.PERMISSION_DENIED),
    "AlreadyLoaded": ("ValidationError", 409, None, 409, 409, grpc.StatusCode.FAILED_PRECONDITION),
    "ProtectedModel": ("ValidationError", 409, None, 409, 409, grpc.StatusCode.FAILED_PRECONDITION),
    "StreamingUnsupported": ("ValidationError", 404, None, 404, 404, grpc.StatusCode.NOT_FOUND),
    "HostedModelNotFound": ("ValidationError", 404, None, 404, 404, grpc.StatusCode.NOT_FOUND),
}

ERROR_CLASSES = sorted(
    (cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, MMEError)),
    key=lambda cls: cls.__name__,
)


def make(cls) -> MMEError:
    if cls is errors.SignatureRejected:
        return cls("InvalidSignatureException", MESSAGE)
    return cls(MESSAGE)


def sent(coroutine) -> tuple:
    """Run an ASGI answer; its status, headers (a dict) and body."""
    messages = []

    async def send(message):
        messages.append(message)

    asyncio.run(coroutine(send))
    start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
    headers = dict(start["headers"])
    assert int(headers[b"content-length"]) == len(body)
    return start["status"], headers, body


def answered(answer: errors.Answer) -> tuple:
    status, headers, body = sent(lambda send: respond_json(send, *answer))
    assert headers[b"content-type"] == b"application/json"
    return status, headers, json.loads(body)  # the body parses as JSON


def test_every_error_class_has_its_row():
    assert {cls.__name__ for cls in ERROR_CLASSES} == set(EXPECTED)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_in_every_route_family(cls):
    code, sagemaker_status, original, hosting, v2, grpc_code = EXPECTED[cls.__name__]
    error = make(cls)

    # SageMaker's runtime routes: its error shape, the code in x-amzn-ErrorType
    status, headers, body = answered(sagemaker_answer(error, REQUEST_ID))
    assert status == sagemaker_status
    assert headers[b"x-amzn-errortype"] == code.encode()
    assert headers[b"x-amzn-requestid"] == REQUEST_ID.encode()
    if original is None:
        assert body == {"ErrorCode": code, "Message": MESSAGE}
    else:
        side = "CLIENT" if original < 500 else "SERVER"
        assert set(body) == MODEL_ERROR_FIELDS
        assert body["ErrorCode"] == f"{side}_ERROR_FROM_MODEL"
        assert body["OriginalStatusCode"] == original and body["OriginalMessage"] == MESSAGE
        assert body["Message"] == (
            f'Received {side.lower()} error ({original}) from primary with message "{MESSAGE}". '
            "See the server log for more information."
        )

    # the hosting contract: the model's own status, a plain message, never SageMaker's shape
    for request_id in (REQUEST_ID, None):
        status, headers, body = answered(hosting_answer(error, request_id))
        assert status == hosting
        assert list(body) == ["message"] and body["message"] == MESSAGE
        assert b"x-amzn-errortype" not in headers
        assert headers.get(b"x-amzn-requestid") == (request_id.encode() if request_id else None)

    # V2 REST: MLServer's shape, and the status MLServer's own handler answers for it
    status, headers, body = answered(v2_answer(error))
    assert status == v2 == error.status_code
    assert body == {"error": MESSAGE} and str(error) == MESSAGE

    # gRPC: through the V2 status, as MLServer maps it
    assert grpc_status(error) == grpc_code


def test_grpc_mapping_covers_every_status_an_error_can_answer():
    statuses = set()
    for cls in ERROR_CLASSES:
        error = make(cls)
        statuses |= {error.sagemaker_status, errors.hosting_status(error), error.v2_status}
        if error.original_status is not None:
            statuses.add(error.original_status)
    assert statuses <= set(GRPC_STATUSES), sorted(statuses - set(GRPC_STATUSES))


def test_grpc_mapping_agrees_with_mlservers_own():
    # mlserver_internals.map_grpc_statuses adds ours without overriding MLServer's
    for status, code in grpc_utils.STATUS_CODE_MAPPING.items():
        if status in GRPC_STATUSES:
            assert GRPC_STATUSES[status] == code, status


# --- the routes answer through the table -----------------------------------------------------------


def http_scope(method, path, headers=()):
    return {"type": "http", "method": method, "path": path, "query_string": b"", "headers": list(headers)}


def call(app, scope, messages=({"type": "http.request", "body": b"", "more_body": False},)):
    pending = list(messages)

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    status, headers, body = sent(lambda send: app(scope, receive, send))
    return status, headers, json.loads(body)


class Hosted:
    """The lifecycle's hosted models as HostingRoutes sees them, loads failing with ``error``."""

    def __init__(self, error=None):
        self.error = error

    def listing(self):
        return {}

    async def load(self, name, folder):
        raise self.error

    async def unload(self, name):
        raise errors.HostedModelNotFound(f"Model '{name}' is not loaded.")


class Lifecycle:
    def __init__(self, error=None):
        self.hosted = Hosted(error)


def hosting_routes(tmp_path, error=None):
    async def invoke(*args, **kwargs):
        raise AssertionError("not an invocation")

    return HostingRoutes(Lifecycle(error), [str(tmp_path)], invoke)


def test_a_body_cut_short_on_the_hosting_load_route_answers_as_the_other_hosting_routes(tmp_path):
    routes = hosting_routes(tmp_path)
    cut = [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    status, headers, body = call(routes, http_scope("POST", "/models"), cut)
    assert status == hosting_answer(BadPayload(MESSAGE)).status == 400
    assert list(body) == ["message"] and b"x-amzn-errortype" not in headers


@pytest.mark.parametrize(
    "error, status",
    [
        (errors.AlreadyLoaded("loaded"), 409),
        (errors.ModelTooLarge("no room"), 507),
        (errors.BrokenModel("broken"), 500),
        (ModelStillLoading("interrupted"), 503),
    ],
    ids=["already-loaded", "no-room", "broken", "interrupted"],
)
def test_hosting_load_failures(tmp_path, error, status):
    routes = hosting_routes(tmp_path, error)
    request = json.dumps({"model_name": "m", "url": str(tmp_path)}).encode()
    scope = http_scope("POST", "/models")
    answer_status, _, body = call(routes, scope, [{"type": "http.request", "body": request, "more_body": False}])
    assert (answer_status, body) == (status, {"message": error.message})


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("POST", "/models", b"not json", 400),
        ("POST", "/models", b"{}", 400),
        ("POST", "/models", b'{"model_name": "m", "url": "/proc"}', 400),
        ("GET", "/models/nothing", b"", 404),
        ("DELETE", "/models/nothing", b"", 404),
    ],
)
def test_hosting_refusals(tmp_path, method, path, body, status):
    scope = http_scope(method, path)
    request = [{"type": "http.request", "body": body, "more_body": False}]
    answer_status, _, answer = call(hosting_routes(tmp_path), scope, request)
    assert answer_status == status and list(answer) == ["message"]


def test_v2_headers_too_large_is_431_in_mlservers_shape():
    async def app(scope, receive, send):
        raise AssertionError("refused before the app")

    middleware = V2CompatMiddleware(app, MMESettings(max_header_bytes=100))
    status, _, body = call(middleware, http_scope("GET", "/v2/models/m", [(b"x-big", b"x" * 200)]))
    assert status == 431 and list(body) == ["error"]


def test_sagemaker_routes_answer_sagemakers_shape():
    async def app(scope, receive, send):
        raise AssertionError("answered before the app")

    middleware = SageMakerMiddleware(app, lifecycle=None, settings=MMESettings(admin_token="token"))
    status, headers, body = call(middleware, http_scope("POST", "/invocations"))
    assert status == 400 and headers[b"x-amzn-errortype"] == b"ValidationError"
    assert set(body) == {"ErrorCode", "Message"} and body["ErrorCode"] == "ValidationError"
    status, headers, body = call(middleware, http_scope("POST", "/v2/repository/index"))
    assert status == 401 and headers[b"x-amzn-errortype"] == b"UnauthorizedException"
    assert body == {"ErrorCode": "UnauthorizedException", "Message": "This route needs the server's admin bearer token."}
