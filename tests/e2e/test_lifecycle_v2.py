"""V2 clients get the multi-model endpoint too: a model under the prefix loads on its first V2 call.

REST and gRPC inference, metadata and readiness go through the same lifecycle as
SageMaker requests: one download, one load, the budgets and the LRU order.
"""

from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from support.artifacts import EXPECTED, ROWS, example_bytes
from support.serving import call, gated_artifact, loaded, metric, metrics_text, wait_until

HOUSTON = EXPECTED["predictions"]["Houston_TX.tar.gz"]


def houston(prefix, *targets):
    for target in targets:
        prefix.put(target, example_bytes("Houston_TX.tar.gz"))


def rest_infer(server, name):
    payload = {"inputs": [{"name": "input-0", "shape": [len(ROWS), 6], "datatype": "FP64", "data": sum(ROWS, [])}]}
    return httpx.post(f"{server.url}/v2/models/{name}/infer", json=payload, timeout=60)


def grpc_infer(server, name):
    request = pb.ModelInferRequest(
        model_name=name,
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input-0", datatype="FP64", shape=[len(ROWS), 6],
            contents=pb.InferTensorContents(fp64_contents=sum(ROWS, [])))],
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.env['MLSERVER_GRPC_PORT']}") as channel:
        reply = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    return list(reply.outputs[0].contents.fp32_contents or reply.outputs[0].contents.fp64_contents)


def test_rest_and_grpc_inference_load_on_first_use_and_take_part_in_the_lru(prefix, start_server):
    houston(prefix, "rest.tar.gz", "grpc.tar.gz", "sagemaker.tar.gz")
    # lru: tinylfu weighs each model's measured load time, which a busy machine can make 8 times longer for one
    server = start_server(max_loaded_models=2, eviction_policy="lru")
    reply = rest_infer(server, "rest")
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == HOUSTON
    assert [round(v, 4) for v in grpc_infer(server, "grpc")] == [round(v, 4) for v in HOUSTON]
    assert loaded(server) == {"rest", "grpc"}
    assert rest_infer(server, "rest").status_code == 200  # now "grpc" is the least recently used
    assert call(server, "sagemaker.tar.gz").status_code == 200
    assert loaded(server) == {"rest", "sagemaker"}
    assert [prefix.gets(f"{name}.tar.gz") for name in ("rest", "grpc", "sagemaker")] == [1, 1, 1]


def test_metadata_loads_and_readiness_only_reports(prefix, start_server):
    houston(prefix, "meta.tar.gz", "ready.tar.gz")
    server = start_server()
    for _ in range(3):  # a monitor polling readiness loads nothing
        assert httpx.get(f"{server.url}/v2/models/ready/ready", timeout=60).status_code == 400
    metadata = httpx.get(f"{server.url}/v2/models/meta", timeout=60)
    assert metadata.status_code == 200 and metadata.json()["name"] == "meta"
    assert httpx.get(f"{server.url}/v2/models/meta/ready", timeout=60).status_code == 200
    assert loaded(server) == {"meta"}
    assert prefix.gets("ready.tar.gz") == 0
    assert rest_infer(server, "ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/ready/ready", timeout=60).status_code == 200
    assert httpx.post(f"{server.url}/v2/repository/models/ready/unload").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/ready/ready", timeout=60).status_code == 400
    assert loaded(server) == {"meta"}


def test_missing_and_broken_models_answer_v2_errors(prefix, start_server):
    prefix.put("broken.tar.gz", b"not an archive")
    server = start_server()
    missing = rest_infer(server, "missing")
    assert missing.status_code == 404 and "Could not find model data" in missing.json()["error"]
    broken = rest_infer(server, "broken")
    assert broken.status_code == 422 and "cannot be unpacked" in broken.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/missing/ready").status_code == 400  # not loaded; the store is not asked
    assert httpx.get(f"{server.url}/v2/models/no~~such-name/ready").status_code == 404  # no target has this name
    assert httpx.get(f"{server.url}/v2/models/sagemaker~router/ready").status_code == 200  # MLServer's own
    junk = rest_infer(server, "no~~such-name")  # no target maps to it: refused before MLServer counts it
    assert junk.status_code == 404
    assert "no~~such-name" not in metrics_text(server)


def test_the_router_is_neither_loaded_again_nor_unloaded(server):
    for action in ("load", "unload"):
        reply = httpx.post(f"{server.url}/v2/repository/models/sagemaker~router/{action}", timeout=60)
        assert reply.status_code == 409 and "router" in reply.json()["error"]
    assert call(server, "Houston_TX.tar.gz").status_code == 200


def test_concurrent_first_calls_over_v2_and_sagemaker_load_once(prefix, start_server):
    houston(prefix, "together.tar.gz")
    server = start_server()

    def first_call(i):
        if i % 2:
            return call(server, "together.tar.gz").status_code
        return rest_infer(server, "together").status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(first_call, range(16))) == [200] * 16
    assert prefix.gets("together.tar.gz") == 1
    assert server.log().count("event=load model=together.tar.gz") == 1


def test_per_model_metrics_keep_a_bounded_label_set(prefix, start_server):
    houston(prefix, "a.tar.gz", "b.tar.gz", "c.tar.gz")
    server = start_server(per_model_metrics_top_k=2)
    for target in ("a.tar.gz", "a.tar.gz", "b.tar.gz", "c.tar.gz", "missing.tar.gz"):
        call(server, target)
    assert call(server, "a.tar.gz", body=b"not,numbers\n").status_code == 424
    text = metrics_text(server)
    models = {line.split('model="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("mme_model_request_seconds_count{")}
    assert models == {"a.tar.gz", "b.tar.gz", "other"}
    assert metric(text, 'mme_model_request_seconds_count{model="a.tar.gz"}') == 3
    assert metric(text, 'mme_model_request_seconds_count{model="other"}') == 2  # c, and the missing one
    assert metric(text, 'mme_model_errors_total{code="ModelError",model="a.tar.gz"}') == 1
    assert metric(text, 'mme_model_errors_total{code="ValidationError",model="other"}') == 1


def test_a_slow_first_call_answers_503_with_retry_after_or_unavailable_and_the_load_goes_on(
    prefix, start_server, tmp_path
):
    gate = tmp_path / "gate"
    prefix.put("slow.tar.gz", gated_artifact(load_gate=str(gate)))
    server = start_server(load_wait_timeout=0.5)
    payload = {"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
    reply = httpx.post(f"{server.url}/v2/models/slow/infer", json=payload, timeout=60)
    assert (reply.status_code, reply.headers.get("retry-after")) == (503, "1"), reply.text
    assert "still loading" in reply.json()["error"]
    with pytest.raises(grpc.RpcError) as refused:
        grpc_infer(server, "slow")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    gate.touch()
    wait_until(lambda: httpx.post(f"{server.url}/v2/models/slow/infer", json=payload).status_code == 200,
               message="load finished")
    assert prefix.gets("slow.tar.gz") == 1
