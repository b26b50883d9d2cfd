"""SageMaker's hosting contract, driven as SageMaker drives a multi-model container."""

import os
import tarfile

import httpx
import pytest
from artifacts import EXAMPLES, EXPECTED, ROWS
from mlserver_process import MLServerProcess

CSV = "".join(",".join(map(str, row)) + "\n" for row in ROWS).encode()


@pytest.fixture(scope="module")
def hosting(tmp_path_factory):
    """A container as SageMaker starts it; /opt/ml/models stands in a temporary folder."""
    work = tmp_path_factory.mktemp("hosting")
    root = work / "opt-ml-models"
    for city in ("Houston_TX", "Chicago_IL", "NewYork_NY"):
        folder = root / f"hash-{city}" / "model"  # SageMaker unpacks each artifact into such a folder
        folder.mkdir(parents=True)
        with tarfile.open(os.path.join(EXAMPLES, f"{city}.tar.gz")) as tar:
            tar.extractall(folder, filter="data")
    os.symlink("/etc", root / "escape")
    process = MLServerProcess(
        {
            "SAGEMAKER_MULTI_MODEL": "true",
            "MLSERVER_MME_HOSTING_ROOTS": str(root),
            "MLSERVER_MME_MAX_LOADED_MODELS": "2",
            # SageMaker's calls are not signed: SigV4 guards /invocations only
            "MLSERVER_MME_SIGV4_KEYS": "AKIDHOSTING:secret",
            "MLSERVER_MME_CACHE_DIR": str(work / "cache"),
        },
        str(work / "log"),
    ).start()
    process.root = root
    yield process
    process.stop()


def load(server, name, city):
    return httpx.post(
        server.url + "/models",
        json={"model_name": name, "url": str(server.root / f"hash-{city}" / "model")},
        timeout=60,
    )


def invoke(server, name, target):
    return httpx.post(
        f"{server.url}/models/{name}/invoke",
        content=CSV,
        headers={"Content-Type": "text/csv", "Accept": "application/json", "X-Amzn-SageMaker-Target-Model": target},
    )


def test_load_invoke_list_describe_unload(hosting):
    assert load(hosting, "m-houston", "Houston_TX").status_code == 200
    assert load(hosting, "m-chicago", "Chicago_IL").status_code == 200
    reply = invoke(hosting, "m-houston", "Houston_TX.tar.gz")
    assert reply.status_code == 200, reply.text
    assert reply.json() == EXPECTED["predictions"]["Houston_TX.tar.gz"]
    assert invoke(hosting, "m-chicago", "Chicago_IL.tar.gz").json() == EXPECTED["predictions"]["Chicago_IL.tar.gz"]

    # already loaded: 409; no room (2 models at most): 507, and SageMaker unloads one
    assert load(hosting, "m-houston", "Houston_TX").status_code == 409
    assert load(hosting, "m-newyork", "NewYork_NY").status_code == 507

    first = httpx.get(hosting.url + "/models", params={"limit": 1}).json()
    assert first == {
        "models": [{"modelName": "m-chicago", "modelUrl": str(hosting.root / "hash-Chicago_IL" / "model")}],
        "nextPageToken": "1",
    }
    second = httpx.get(hosting.url + "/models", params={"limit": 1, "next_page_token": "1"}).json()
    assert [m["modelName"] for m in second["models"]] == ["m-houston"] and "nextPageToken" not in second

    described = httpx.get(hosting.url + "/models/m-houston")
    assert described.json()["modelUrl"] == str(hosting.root / "hash-Houston_TX" / "model")

    assert httpx.delete(hosting.url + "/models/m-chicago").status_code == 200
    assert httpx.get(hosting.url + "/models/m-chicago").status_code == 404
    assert invoke(hosting, "m-chicago", "Chicago_IL.tar.gz").status_code == 404
    assert load(hosting, "m-newyork", "NewYork_NY").status_code == 200
    assert invoke(hosting, "m-newyork", "x").json() == EXPECTED["predictions"]["NewYork_NY.tar.gz"]
    assert httpx.delete(hosting.url + "/models/m-newyork").status_code == 200
    assert httpx.delete(hosting.url + "/models/m-houston").status_code == 200
    assert httpx.get(hosting.url + "/models").json() == {"models": []}


def test_unknown_model(hosting):
    assert httpx.get(hosting.url + "/models/nothing").status_code == 404
    assert httpx.delete(hosting.url + "/models/nothing").status_code == 404
    reply = invoke(hosting, "nothing", "x")
    assert reply.status_code == 404
    assert "not loaded" in reply.json()["Message"]


@pytest.mark.parametrize("url", ["/proc", "/sys", "/dev", "/etc", "escape", "../outside"])
def test_url_outside_the_allowed_roots_is_refused(hosting, url):
    url = url if url.startswith("/") else str(hosting.root / url)
    reply = httpx.post(hosting.url + "/models", json={"model_name": "bad", "url": url})
    assert reply.status_code == 400
    assert "outside the allowed roots" in reply.json()["message"]


def test_malformed_load_requests(hosting):
    assert httpx.post(hosting.url + "/models", content=b"{not json").status_code == 400
    assert httpx.post(hosting.url + "/models", json={"model_name": "x"}).status_code == 400
    missing = str(hosting.root / "hash-missing")
    assert httpx.post(hosting.url + "/models", json={"model_name": "x", "url": missing}).status_code == 400


def test_sigv4_guards_invocations_but_not_the_hosting_contract(hosting):
    reply = httpx.post(
        hosting.url + "/invocations", content=CSV,
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"},
    )
    assert reply.status_code == 403
    assert load(hosting, "m-signed", "Houston_TX").status_code == 200
    assert invoke(hosting, "m-signed", "Houston_TX.tar.gz").status_code == 200
    assert httpx.delete(hosting.url + "/models/m-signed").status_code == 200
