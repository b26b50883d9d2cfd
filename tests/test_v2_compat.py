"""tritonclient as it comes: the binary tensor extension, an empty index body, and the gRPC guard.

Unit tests of the conversion (requests and answers built and read by tritonclient
itself), of the ASGI middleware around a stand-in for MLServer's app, then end to
end with a real server: tritonclient's HTTP and gRPC clients on their defaults.
"""

import asyncio
import gzip
import json
import os
import subprocess
import sys
import time
import zlib

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from artifacts import EXPECTED, ROWS
from conftest import BUCKET, s3_env
from mlserver.grpc import dataplane_pb2, dataplane_pb2_grpc, model_repository_pb2, model_repository_pb2_grpc
from mlserver_process import MLServerProcess
from tritonclient.utils import np_to_triton_dtype

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

TOKEN = "grpc-admin-token"
HOUSTON, BOSTON = "Houston_TX.tar.gz", "northeast/Boston_MA.tar.gz"
NAMES = {HOUSTON: "Houston_TX", BOSTON: "northeast~2FBoston_MA"}


def triton_body(inputs, outputs=None, **options):
    """The body and header length tritonclient.http sends for these inputs (None: all JSON)."""
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **options)


def triton_input(name, array, binary=True):
    tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    return tensor.set_data_from_numpy(array, binary_data=binary)


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


# --- end to end: tritonclient against a real server -------------------------------------------------

TRITON_PREFIX = "triton/"


@pytest.fixture(scope="module")
def triton_server(s3, artifacts, tmp_path_factory):
    """A server of its own (V2 loads and unloads here leave the shared one alone)."""
    for target in (HOUSTON, BOSTON):
        s3.client.put_object(Bucket=BUCKET, Key=TRITON_PREFIX + target, Body=artifacts[target])
    work = tmp_path_factory.mktemp("triton")
    env = {**s3_env(s3, TRITON_PREFIX), "MLSERVER_MME_CACHE_DIR": str(work / "cache")}
    process = MLServerProcess(env, str(work / "mlserver.log")).start()
    yield process
    process.stop()


def grpc_address(server) -> str:
    return f"127.0.0.1:{server.env['MLSERVER_GRPC_PORT']}"


def expected(target):
    return np.asarray(EXPECTED["predictions"][target], dtype=np.float32)


@pytest.mark.parametrize("target", [HOUSTON, BOSTON])
def test_tritonclient_http_on_its_defaults(triton_server, target):
    name = NAMES[target]
    client = httpclient.InferenceServerClient(url=triton_server.url.removeprefix("http://"))
    try:
        index = {item["name"]: item for item in client.get_model_repository_index()}
        assert index[name]["target_model"] == target
        client.load_model(name)
        assert client.is_model_ready(name)
        metadata = client.get_model_metadata(name)
        assert metadata["name"] == name

        rows = triton_input("input-0", np.asarray(ROWS, dtype=np.float32))
        result = client.infer(name, [rows])  # binary input, binary outputs: tritonclient's defaults
        (output,) = result.get_response()["outputs"]
        assert "binary_data_size" in output["parameters"]
        assert np.array_equal(result.as_numpy(output["name"]).ravel(), expected(target))

        named = [httpclient.InferRequestedOutput(output["name"], binary_data=True)]
        rows64 = triton_input("input-0", np.asarray(ROWS, dtype=np.float64))
        result = client.infer(name, [rows64], outputs=named)
        assert np.array_equal(result.as_numpy(output["name"]).ravel(), expected(target))

        result = client.infer(name, [rows], request_compression_algorithm="gzip", response_compression_algorithm="gzip")
        assert np.array_equal(result.as_numpy(output["name"]).ravel(), expected(target))

        as_json = [httpclient.InferRequestedOutput(output["name"], binary_data=False)]
        result = client.infer(name, [rows], outputs=as_json)
        assert result.get_output(output["name"])["data"] == EXPECTED["predictions"][target]

        client.unload_model(name)
        assert {item["name"]: item for item in client.get_model_repository_index()}[name]["state"] == "UNAVAILABLE"
    finally:
        client.close()


def test_json_clients_get_what_they_got(triton_server):
    name = NAMES[HOUSTON]
    assert httpx.post(f"{triton_server.url}/v2/repository/models/{name}/load", timeout=60).status_code == 200
    payload = {"inputs": [{"name": "input-0", "shape": [len(ROWS), 6], "datatype": "FP64", "data": sum(ROWS, [])}]}
    reply = httpx.post(f"{triton_server.url}/v2/models/{name}/infer", json=payload, timeout=60)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in reply.headers
    assert reply.json()["outputs"][0]["data"] == EXPECTED["predictions"][HOUSTON]
    assert httpx.post(f"{triton_server.url}/v2/repository/index", timeout=60).status_code == 200  # no body at all


def test_a_malformed_binary_request_gets_400_from_the_server(triton_server):
    reply = httpx.post(
        f"{triton_server.url}/v2/models/{NAMES[HOUSTON]}/infer",
        content=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "99"},
    )
    assert reply.status_code == 400 and "Inference-Header-Content-Length" in reply.json()["error"]


@pytest.mark.parametrize("target", [HOUSTON, BOSTON])
def test_tritonclient_grpc_on_its_defaults(triton_server, target):
    name = NAMES[target]
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_grpc_client.py")
    run = subprocess.run(
        [sys.executable, script, grpc_address(triton_server), name, json.dumps(ROWS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert name in seen["index"]
    assert seen["ready"] and seen["metadata_name"] == name
    assert seen["predictions"] == expected(target).tolist()
    assert seen["state_after_unload"] in ("UNAVAILABLE", "State.UNAVAILABLE")  # MLServer's gRPC spells it so


def unauthenticated(call) -> bool:
    try:
        call()
    except grpc.RpcError as error:
        return error.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def test_grpc_repository_calls_need_the_admin_token(prefix, artifacts, start_server):
    prefix.put(HOUSTON, artifacts[HOUSTON])
    server = start_server(admin_token=TOKEN)
    admin = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(grpc_address(server)) as channel:
        v2 = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        older = model_repository_pb2_grpc.ModelRepositoryServiceStub(channel)
        load = dataplane_pb2.RepositoryModelLoadRequest(model_name="Houston_TX")
        unload = dataplane_pb2.RepositoryModelUnloadRequest(model_name="Houston_TX")
        index = dataplane_pb2.RepositoryIndexRequest()
        for refused in (
            lambda: v2.RepositoryIndex(index),
            lambda: v2.RepositoryModelLoad(load),
            lambda: v2.RepositoryModelUnload(unload),
            lambda: v2.RepositoryModelLoad(load, metadata=(("authorization", "Bearer wrong"),)),
            lambda: v2.RepositoryModelLoad(load, metadata=(("authorization", TOKEN),)),
            lambda: older.RepositoryIndex(model_repository_pb2.RepositoryIndexRequest()),
            lambda: older.RepositoryModelLoad(model_repository_pb2.RepositoryModelLoadRequest(model_name="Houston_TX")),
        ):
            assert unauthenticated(refused)
        assert "Houston_TX" in {model.name for model in v2.RepositoryIndex(index, metadata=admin).models}
        older_index = older.RepositoryIndex(model_repository_pb2.RepositoryIndexRequest(), metadata=admin)
        assert "Houston_TX" in {model.name for model in older_index.models}
        v2.RepositoryModelLoad(load, metadata=admin)

        # inference, metadata and health stay open
        contents = dataplane_pb2.InferTensorContents(fp64_contents=sum(ROWS, []))
        tensor = dataplane_pb2.ModelInferRequest.InferInputTensor(
            name="input-0", datatype="FP64", shape=[len(ROWS), 6], contents=contents
        )
        answer = v2.ModelInfer(dataplane_pb2.ModelInferRequest(model_name="Houston_TX", inputs=[tensor]))
        assert list(answer.outputs[0].contents.fp32_contents) == EXPECTED["predictions"][HOUSTON]
        assert v2.ModelReady(dataplane_pb2.ModelReadyRequest(name="Houston_TX")).ready
        assert v2.ModelMetadata(dataplane_pb2.ModelMetadataRequest(name="Houston_TX")).name == "Houston_TX"
        assert v2.ServerLive(dataplane_pb2.ServerLiveRequest()).live

        v2.RepositoryModelUnload(unload, metadata=admin)
    # REST keeps its own check
    assert httpx.post(f"{server.url}/v2/repository/index", json={}).status_code == 401


def test_without_a_token_grpc_repository_calls_stay_open(triton_server):
    with grpc.insecure_channel(grpc_address(triton_server)) as channel:
        v2 = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert v2.RepositoryIndex(dataplane_pb2.RepositoryIndexRequest()).models


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


def test_streaming_inference_is_refused_before_mlserver_sees_the_name(server):
    names = [f"made-up-{number}" for number in range(50)] + ["no~~such-name", "Houston_TX"]
    request = {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": ROWS[0]}]}
    for name in names:
        reply = httpx.post(f"{server.url}/v2/models/{name}/infer_stream", json=request, timeout=30)
        assert reply.status_code == 404, reply.text
        assert ("not found" if name == "no~~such-name" else "does not stream") in reply.json()["error"]
    message = dataplane_pb2.ModelInferRequest(
        model_name="made-up-grpc",
        inputs=[dataplane_pb2.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, 6], contents=dataplane_pb2.InferTensorContents(fp32_contents=ROWS[0])
        )],
    )
    with grpc.insecure_channel(grpc_address(server)) as channel:
        v2 = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name in ("made-up-grpc", "Houston_TX"):
            message.model_name = name
            with pytest.raises(grpc.RpcError) as refused:
                list(v2.ModelStreamInfer(iter([message]), timeout=30))
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value.details()
    metrics = httpx.get(f"http://127.0.0.1:{server.env['MLSERVER_METRICS_PORT']}/metrics").text
    assert "made-up" not in metrics and "no~~such-name" not in metrics  # no series for names never loaded
    assert "Traceback" not in server.log()[-20000:]


@pytest.mark.parametrize("rows", [2, 65])
def test_a_bytes_tensor_of_words_is_a_400_whatever_the_batch(server, rows):
    request = {"inputs": [{"name": "x", "shape": [rows, 1], "datatype": "BYTES", "data": ["word"] * rows}]}
    reply = httpx.post(f"{server.url}/v2/models/Houston_TX/infer", json=request, timeout=30)
    assert reply.status_code == 400, reply.text
    assert "numeric tensor" in reply.json()["error"]
