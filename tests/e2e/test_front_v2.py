"""The V2 protocol on the same models, sharing one loaded instance with SageMaker calls."""

import json

import httpx
from support.artifacts import EXPECTED, ROWS
from support.clients import invoke
from support.s3server import BUCKET, PREFIX

CSV = "".join(",".join(map(str, row)) + "\n" for row in ROWS).encode()


def v2_infer(server, name):
    payload = {"inputs": [{"name": "input-0", "shape": [len(ROWS), 6], "datatype": "FP64", "data": sum(ROWS, [])}]}
    return httpx.post(f"{server.url}/v2/models/{name}/infer", json=payload, timeout=60)


def sagemaker_call(server, target):
    return invoke(server, target, CSV)


def index(server):
    reply = httpx.post(server.url + "/v2/repository/index", json={})
    assert reply.status_code == 200
    return {item["name"]: item for item in reply.json()}


def test_index_lists_every_artifact_by_v2_name(server, artifacts):
    listed = index(server)
    assert "sagemaker~router" in listed
    assert {"Houston_TX", "northeast~2FBoston_MA", "formats~2Flegacy.tgz~", "formats~2Fxgboost-model~"} <= set(listed)
    assert len(listed) == len(artifacts) + 1
    assert listed["northeast~2FBoston_MA"]["target_model"] == "northeast/Boston_MA.tar.gz"
    assert listed["formats~2Flegacy.tgz~"]["target_model"] == "formats/legacy.tgz"
    assert "target_model" not in listed["sagemaker~router"]


def test_index_with_gzip_accepted_still_gives_target_paths(server):
    reply = httpx.post(server.url + "/v2/repository/index", json={}, headers={"Accept-Encoding": "gzip"})
    assert reply.status_code == 200
    assert {item["name"]: item.get("target_model") for item in reply.json()}["Houston_TX"] == "Houston_TX.tar.gz"


def test_v2_load_infer_unload(server):
    name = "northeast~2FBoston_MA"
    assert httpx.post(f"{server.url}/v2/repository/models/{name}/load", timeout=60).status_code == 200
    assert index(server)[name]["state"] == "READY"
    assert httpx.get(f"{server.url}/v2/models/{name}/ready").status_code == 200
    reply = v2_infer(server, name)
    assert reply.status_code == 200, reply.text
    output = reply.json()["outputs"][0]
    assert output["data"] == EXPECTED["predictions"]["northeast/Boston_MA.tar.gz"]
    assert httpx.post(f"{server.url}/v2/repository/models/{name}/unload").status_code == 200
    assert index(server)[name]["state"] == "UNAVAILABLE"
    assert v2_infer(server, name).json()["outputs"][0]["data"] == output["data"]  # loaded again on first use
    assert index(server)[name]["state"] == "READY"


def test_v2_load_then_sagemaker_call_downloads_once(server, s3):
    target = "once/v2-then-sagemaker.tar.gz"
    key = f"/{BUCKET}/{PREFIX}{target}"
    assert s3.count("GET", key) == 0
    assert httpx.post(f"{server.url}/v2/repository/models/once~2Fv2-then-sagemaker/load", timeout=60).status_code == 200
    reply = sagemaker_call(server, target)
    assert reply.status_code == 200
    assert reply.json() == EXPECTED["predictions"]["Houston_TX.tar.gz"]
    assert s3.count("GET", key) == 1


def test_sagemaker_load_is_the_v2_model_and_reloads_from_disk(server, s3):
    target = "once/unload-reload.tar.gz"
    name = "once~2Funload-reload"
    key = f"/{BUCKET}/{PREFIX}{target}"
    assert sagemaker_call(server, target).status_code == 200
    assert index(server)[name]["state"] == "READY"
    assert v2_infer(server, name).json()["outputs"][0]["data"] == EXPECTED["predictions"]["Houston_TX.tar.gz"]
    assert httpx.post(f"{server.url}/v2/repository/models/{name}/unload").status_code == 200
    reply = sagemaker_call(server, target)
    assert reply.status_code == 200
    assert json.loads(reply.content) == EXPECTED["predictions"]["Houston_TX.tar.gz"]
    assert s3.count("GET", key) == 1
