"""tritonclient's HTTP and gRPC clients on their defaults against a real server, and V2 calls it refuses.

The conversion and the middleware alone: tests/unit/test_front_v2_compat.py.
"""

import json
import os
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from mlserver.grpc import dataplane_pb2, dataplane_pb2_grpc, model_repository_pb2, model_repository_pb2_grpc
from support.artifacts import EXPECTED, ROWS
from support.mlserver_process import MLServerProcess
from support.paths import TESTS
from support.s3server import BUCKET, s3_env
from support.triton import triton_input

SUPPORT = os.path.join(TESTS, "support")
TOKEN = "grpc-admin-token"
HOUSTON, BOSTON = "Houston_TX.tar.gz", "northeast/Boston_MA.tar.gz"
NAMES = {HOUSTON: "Houston_TX", BOSTON: "northeast~2FBoston_MA"}

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
        assert not client.is_model_ready(name)  # readiness reports the state: it loads nothing
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
    script = os.path.join(SUPPORT, "triton_grpc_client.py")
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
    assert seen["ready_after_unload"] is False
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
