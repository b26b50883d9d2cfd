"""tritonclient as it comes: the binary tensor extension, an empty index body, and the gRPC guard.

Tests of the conversion (requests and answers built and read by tritonclient itself) and
of the ASGI middleware around a stand-in for MLServer's app; tritonclient's HTTP and gRPC
clients against a real server are in tests/e2e/test_front_v2_compat_served.py.
"""

import asyncio
import gzip
import json
import time
import zlib

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from support.artifacts import ROWS
from support.triton import triton_body, triton_input

from mlserver_mme.config import MMESettings
from mlserver_mme.front.grpc_guard import GUARDED, RepositoryGuard
from mlserver_mme.front.v2_compat import (
    BinaryChoice,
    MalformedRequest,
    V2CompatMiddleware,
    binary_answer,
    binary_choice,
    inflated,
    json_request,
)

# --- requests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.asarray(ROWS, dtype=np.float32),
        np.asarray(ROWS, dtype=np.float64),
        np.arange(12, dtype=np.int64).reshape(3, 4) - 6,
        np.arange(6, dtype=np.uint8),
        np.asarray([[True, False], [False, True]]),
        np.asarray([0.5, -2.25, 65504.0], dtype=np.float16),
        np.asarray([b"caf\xc3\xa9", b"", b"tea"], dtype=np.object_),
    ],
    ids=["fp32", "fp64", "int64", "uint8", "bool", "fp16", "bytes"],
)
def test_a_binary_input_becomes_its_json_values(array):
    body, header_length = triton_body([triton_input("input-0", array)])
    request = json_request(body, header_length)
    (tensor,) = request["inputs"]
    assert tensor["shape"] == list(array.shape)
    assert "parameters" not in tensor  # binary_data_size was its only parameter
    if array.dtype == np.object_:
        assert tensor["data"] == [element.decode() for element in array]
    else:
        assert np.array_equal(np.asarray(tensor["data"], dtype=array.dtype), array.ravel())
        assert np.asarray(tensor["data"], dtype=array.dtype).dtype == array.dtype


def test_binary_and_json_inputs_mix_in_order():
    first, second, third = np.ones((2, 2), np.float32), np.arange(3, dtype=np.int32), np.zeros(4, np.float64)
    inputs = [triton_input("a", first), triton_input("b", second, binary=False), triton_input("c", third)]
    body, header_length = triton_body(inputs, parameters={"custom": "kept"})
    request = json_request(body, header_length)
    assert [tensor["data"] for tensor in request["inputs"]] == [[1.0] * 4, [0, 1, 2], [0.0] * 4]
    assert request["parameters"] == {"binary_data_output": True, "custom": "kept"}


def test_nan_travels_as_null_and_infinity_is_refused():
    body, header_length = triton_body([triton_input("x", np.asarray([1.5, np.nan], np.float32))])
    assert b"[1.5,null]" in orjson.dumps(json_request(body, header_length))
    body, header_length = triton_body([triton_input("x", np.asarray([np.inf], np.float32))])
    with pytest.raises(MalformedRequest, match="infinite"):
        json_request(body, header_length)


def binary_request(header: dict, tail: bytes = b"") -> tuple:
    head = json.dumps(header).encode()
    return head + tail, len(head)


def one_input(size, shape=(2,), datatype="FP32", **extra):
    tensor = {"name": "x", "shape": list(shape), "datatype": datatype, "parameters": {"binary_data_size": size}}
    return {"inputs": [{**tensor, **extra}]}


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b'{"inputs": []}', 99, "but the body holds 14 bytes"),
        (b'{"inputs": [}', 13, "not valid JSON"),
        (b"[1, 2]", 6, "JSON object with a list of inputs"),
        (*binary_request(one_input(8), b"\0" * 4), "runs past the end"),
        (*binary_request(one_input(4), b"\0" * 4), "4 bytes of binary data for 2 FP32 values"),
        (*binary_request(one_input(8), b"\0" * 12), "4 bytes after the inputs"),
        (*binary_request(one_input(-1)), "non-negative integer"),
        (*binary_request(one_input("8"), b"\0" * 8), "non-negative integer"),
        (*binary_request(one_input(4, shape=(2,), datatype="BF16"), b"\0" * 4), "cannot be sent as binary"),
        (*binary_request(one_input(8, shape=("2",)), b"\0" * 8), "shape must be"),
        (*binary_request(one_input(8, data=[1, 2]), b"\0" * 8), "both data and binary_data_size"),
        (*binary_request(one_input(6, shape=(1,), datatype="BYTES"), b"\x09\0\0\0ab"), "runs past its binary data"),
        (*binary_request(one_input(5, shape=(1,), datatype="BYTES"), b"\x01\0\0\0\xff"), "UTF-8"),
        (*binary_request(one_input(6, shape=(1,), datatype="BYTES"), b"\0\0\0\0ab"), "more than 1 BYTES"),
    ],
)
def test_malformed_binary_requests_say_why(body, header_length, message):
    with pytest.raises(MalformedRequest, match=message):
        json_request(body, header_length)


def test_which_outputs_are_wanted_in_binary():
    assert binary_choice({"inputs": []}) is None
    assert binary_choice({"parameters": {"binary_data_output": False}}) is None
    # tritonclient's default: no outputs named, all of them in binary
    body, header_length = triton_body([triton_input("x", np.ones(2, np.float32))])
    choice = binary_choice(json_request(body, header_length))
    assert choice.wants("anything")
    outputs = [
        httpclient.InferRequestedOutput("a", binary_data=True),
        httpclient.InferRequestedOutput("b", binary_data=False),
    ]
    body, header_length = triton_body([triton_input("x", np.ones(2, np.float32))], outputs=outputs)
    choice = binary_choice(json_request(body, header_length))
    assert choice.wants("a") and not choice.wants("b") and not choice.wants("c")
    request = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "a", "parameters": {"binary_data": False}}],
    }
    assert binary_choice(request).wants("b") and not binary_choice(request).wants("a")


# --- answers --------------------------------------------------------------------------------------


def mlserver_answer(*outputs) -> bytes:
    return orjson.dumps({"model_name": "m", "id": "1", "parameters": {}, "outputs": list(outputs)})


def test_an_answer_read_back_by_tritonclient():
    predictions = np.asarray([[387599.09375], [0.1]], dtype=np.float32)
    answer = mlserver_answer(
        {
            "name": "output-0",
            "shape": [2, 1],
            "datatype": "FP32",
            "parameters": {"content_type": "np"},
            "data": predictions.ravel().tolist(),
        },
        {"name": "labels", "shape": [2], "datatype": "BYTES", "data": ["a", "bé"]},
        {"name": "kept", "shape": [1], "datatype": "INT64", "data": [7]},
    )
    body, header_length = binary_answer(answer, BinaryChoice(True, {"kept": False}))
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    assert np.array_equal(result.as_numpy("output-0"), predictions)
    assert result.as_numpy("output-0").dtype == np.float32
    assert list(result.as_numpy("labels")) == [b"a", "bé".encode()]
    assert result.get_output("kept")["data"] == [7]  # asked in JSON
    assert result.get_output("output-0")["parameters"] == {"content_type": "np", "binary_data_size": 8}


def test_an_answer_with_null_values_and_nested_data():
    answer = mlserver_answer({"name": "o", "shape": [2, 2], "datatype": "FP64", "data": [[1.0, None], [3.0, 4.0]]})
    body, header_length = binary_answer(answer, BinaryChoice(True, {}))
    values = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length).as_numpy("o")
    assert values.shape == (2, 2) and np.isnan(values[0, 1]) and values[1, 1] == 4.0


def test_outputs_that_cannot_be_binary_stay_json():
    answer = mlserver_answer(
        {"name": "short", "shape": [3], "datatype": "FP32", "data": [1.0]},
        {"name": "odd", "shape": [1], "datatype": "BF16", "data": [1.0]},
    )
    assert binary_answer(answer, BinaryChoice(True, {})) is None


def test_inflating_is_bounded():
    data = b"x" * 1000
    assert inflated(gzip.compress(data), b"gzip", 1000) == data
    assert inflated(zlib.compress(data), b"deflate", 1000) == data
    assert inflated(data, b"identity", 10) == data
    with pytest.raises(Exception, match="larger than the limit"):
        inflated(gzip.compress(b"x" * 10**6), b"gzip", 1000)
    with pytest.raises(MalformedRequest, match="truncated"):
        inflated(gzip.compress(data)[:-12], b"gzip", 1000)
    with pytest.raises(MalformedRequest, match="not supported"):
        inflated(data, b"br", 1000)


# --- the middleware, around a stand-in for MLServer's app ---------------------------------------


class StandIn:
    """Answers V2 infer with each row's sum (FP32), gzip-compressed when asked, and records what it got."""

    def __init__(self):
        self.requests = []

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = dict(scope["headers"])
        self.requests.append((scope["path"], headers, body))
        if scope["path"].endswith("/infer"):
            if b"missing" in scope["path"].encode():
                status, answer = 404, b'{"error":"Model missing not found"}'
            else:
                tensor = orjson.loads(body)["inputs"][0]
                rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
                sums = rows.sum(axis=1).astype(np.float32)
                output = {"name": "output-0", "shape": [len(sums), 1], "datatype": "FP32", "data": sums.tolist()}
                status, answer = 200, mlserver_answer(output)
        else:
            status, answer = (200, b"[]") if body else (422, b'{"detail":"Field required"}')
        extra = []
        if b"gzip" in headers.get(b"accept-encoding", b""):
            answer, extra = gzip.compress(answer), [(b"content-encoding", b"gzip")]
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
            (b"x-model-header", b"kept"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def call(app, path, body=b"", headers=None):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=body, headers=headers or {})

    return asyncio.run(go())


@pytest.fixture
def stand_in():
    inner = StandIn()
    return inner, V2CompatMiddleware(inner, MMESettings(max_payload_bytes=64 * 1024))


ROWS32 = np.asarray(ROWS, dtype=np.float32)


def test_a_binary_request_reaches_the_app_as_json_and_its_answer_comes_back_binary(stand_in):
    inner, app = stand_in
    body, header_length = triton_body([triton_input("input-0", ROWS32)])
    headers = {"Inference-Header-Content-Length": str(header_length), "Accept-Encoding": "gzip"}
    reply = call(app, "/v2/models/m/infer", body, headers)
    assert reply.status_code == 200
    (path, headers, forwarded) = inner.requests[0]
    assert headers[b"content-type"] == b"application/json" and int(headers[b"content-length"]) == len(forwarded)
    assert b"inference-header-content-length" not in headers and b"accept-encoding" not in headers
    assert orjson.loads(forwarded)["inputs"][0]["data"] == ROWS32.ravel().tolist()
    assert reply.headers["x-model-header"] == "kept" and "content-encoding" not in reply.headers
    result = httpclient.InferenceServerClient.parse_response_body(
        reply.content, header_length=int(reply.headers["inference-header-content-length"])
    )
    assert np.array_equal(result.as_numpy("output-0").ravel(), ROWS32.astype(np.float64).sum(axis=1).astype(np.float32))


def test_a_versioned_path_and_a_compressed_body(stand_in):
    inner, app = stand_in
    body, header_length = triton_body([triton_input("input-0", ROWS32)])
    headers = {"Inference-Header-Content-Length": str(header_length), "Content-Encoding": "gzip"}
    reply = call(app, "/v2/models/m/versions/1/infer", gzip.compress(body), headers)
    assert reply.status_code == 200 and "inference-header-content-length" in reply.headers
    assert b"content-encoding" not in inner.requests[0][1]


def test_a_json_request_and_its_answer_pass_byte_for_byte(stand_in):
    inner, app = stand_in
    tensor = {"name": "input-0", "shape": [len(ROWS), 6], "datatype": "FP64", "data": sum(ROWS, [])}
    payload = json.dumps({"inputs": [tensor]}).encode()
    reply = call(app, "/v2/models/m/infer", payload, {"Content-Type": "application/json", "Accept-Encoding": "gzip"})
    assert inner.requests[0][2] == payload
    assert inner.requests[0][1][b"accept-encoding"] == b"gzip"
    assert reply.headers["content-encoding"] == "gzip"  # MLServer's own answer, untouched
    assert "inference-header-content-length" not in reply.headers
    assert reply.json()["outputs"][0]["data"] == np.asarray(ROWS).sum(axis=1).astype(np.float32).tolist()


def test_a_json_request_asking_binary_outputs_gets_them(stand_in):
    inner, app = stand_in
    body, header_length = triton_body([triton_input("input-0", ROWS32, binary=False)])
    assert header_length is None  # tritonclient sends it as plain JSON, yet asks for binary outputs
    reply = call(app, "/v2/models/m/infer", body)
    assert inner.requests[0][2] == body
    assert int(reply.headers["inference-header-content-length"]) < len(reply.content)


def test_errors_of_the_app_pass_through(stand_in):
    inner, app = stand_in
    body, header_length = triton_body([triton_input("input-0", ROWS32)])
    reply = call(app, "/v2/models/missing/infer", body, {"Inference-Header-Content-Length": str(header_length)})
    assert reply.status_code == 404 and reply.json() == {"error": "Model missing not found"}


@pytest.mark.parametrize(
    "header, body, status",
    [
        ("20", b'{"inputs": []}', 400),
        ("x", b'{"inputs": []}', 400),
        ("14", b'{"inputs": []}' + b"\0" * 100_000, 413),
    ],
)
def test_bad_binary_requests_get_mlservers_error_shape(stand_in, header, body, status):
    inner, app = stand_in
    reply = call(app, "/v2/models/m/infer", body, {"Inference-Header-Content-Length": header})
    assert reply.status_code == status
    assert set(reply.json()) == {"error"} and reply.json()["error"]
    assert inner.requests == []


def test_a_gzip_bomb_is_refused(stand_in):
    inner, app = stand_in
    head = json.dumps(one_input(10**6, shape=(250_000,))).encode()
    body = gzip.compress(head + b"\0" * 10**6)
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Encoding": "gzip"}
    reply = call(app, "/v2/models/m/infer", body, headers)
    assert reply.status_code == 413 and "inflated" in reply.json()["error"]
    assert inner.requests == []


def test_an_empty_index_request_is_an_empty_json_object(stand_in):
    inner, app = stand_in
    assert call(app, "/v2/repository/index").status_code == 200
    assert inner.requests[-1][2] == b"{}" and inner.requests[-1][1][b"content-type"] == b"application/json"
    assert call(app, "/v2/repository/index", b'{"ready": true}').status_code == 200
    assert inner.requests[-1][2] == b'{"ready": true}'


def test_other_routes_are_not_touched(stand_in):
    inner, app = stand_in
    call(app, "/v2/models/m/infer_stream", b"", {"Inference-Header-Content-Length": "3"})
    assert inner.requests[-1][1][b"inference-header-content-length"] == b"3"


# --- the gRPC guard ---------------------------------------------------------------------------------


class Context:
    def __init__(self, metadata):
        self.metadata = metadata

    def invocation_metadata(self):
        return self.metadata


def test_the_guard_checks_the_bearer_token():
    guard = RepositoryGuard("s3cret")
    assert guard.authorized((("authorization", "Bearer s3cret"),))
    assert not guard.authorized((("authorization", "Bearer s3cre"),))
    assert not guard.authorized((("authorization", "bearer s3cret"),))
    assert not guard.authorized((("authorization", "Bearer s3cret"), ("authorization", "Bearer other")))
    assert not guard.authorized(())
    assert not guard.authorized(None)
    assert "/inference.GRPCInferenceService/RepositoryModelLoad" in GUARDED
    assert "/inference.GRPCInferenceService/ModelInfer" not in GUARDED


# --- hostile bodies: bounded before MLServer reads them ------------------------------------------


def test_a_compressed_json_body_is_inflated_here_within_the_limit(stand_in):
    inner, app = stand_in
    bomb = gzip.compress(b"{" + b" " * 10**7 + b"}")  # 10 MB of JSON in 10 KB
    reply = call(app, "/v2/models/m/infer", bomb, {"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert reply.status_code == 413 and "inflated" in reply.json()["error"]
    assert inner.requests == []  # MLServer would inflate it without a bound
    request = orjson.dumps({"inputs": [{"name": "input-0", "shape": [1, 6], "datatype": "FP32", "data": ROWS[0]}]})
    assert call(app, "/v2/models/m/infer", gzip.compress(request), {"Content-Encoding": "GZIP"}).status_code == 200
    path, headers, body = inner.requests[-1]
    assert body == request and b"content-encoding" not in headers and headers[b"content-length"] == str(len(body)).encode()


def test_a_json_body_over_the_limit_is_refused_unread(stand_in):
    inner, app = stand_in
    async def chunks():  # chunked, no Content-Length
        for _ in range(3):
            yield b"[" + b"0," * 20_000

    reply = call(app, "/v2/models/m/infer", chunks())
    assert reply.status_code == 413
    assert call(app, "/v2/repository/models/m/load", b" " * (65 * 1024)).status_code == 413
    assert inner.requests == []


@pytest.mark.parametrize(
    "shape, header, why",
    [
        ([2**63 - 1] * 100 + [0], None, "dimensions"),  # 120,000 of them took 34 s to multiply out
        ([2**62, 2**62, 2**62], None, "more values"),
        ([1, 6], "9" * 5000, "number of bytes"),  # over Python's int digits limit: was a 500
    ],
)
def test_hostile_shapes_and_lengths_are_refused_at_once(stand_in, shape, header, why):
    inner, app = stand_in
    head = json.dumps(one_input(24, shape=shape)).encode()
    started = time.perf_counter()
    reply = call(app, "/v2/models/m/infer", head + b"\0" * 24, {"Inference-Header-Content-Length": header or str(len(head))})
    assert reply.status_code == 400 and why in reply.json()["error"], reply.text
    assert time.perf_counter() - started < 5
    assert inner.requests == []


def test_a_header_nested_deeper_than_json_is_written_is_refused(stand_in):
    inner, app = stand_in
    head = json.dumps({"inputs": [], "parameters": {"x": json.loads("[" * 300 + "]" * 300)}}).encode()
    reply = call(app, "/v2/models/m/infer", head, {"Inference-Header-Content-Length": str(len(head))})
    assert reply.status_code == 400, reply.text


def test_one_byte_values_cannot_grow_twentyfold_as_json(stand_in):
    inner, app = stand_in
    values = np.zeros(60_000, dtype=np.uint8)  # 60 KB of values, some 300 KB as JSON
    head = json.dumps({"inputs": [{"name": "input-0", "shape": [60_000], "datatype": "UINT8",
                                   "parameters": {"binary_data_size": 60_000}}]}).encode()
    reply = call(app, "/v2/models/m/infer", head + values.tobytes(), {"Inference-Header-Content-Length": str(len(head))})
    assert reply.status_code == 400 and "more values" in reply.json()["error"]
    assert inner.requests == []
