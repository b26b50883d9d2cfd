"""SageMaker's hosting contract, driven as SageMaker drives a multi-model container."""

import io
import os
import tarfile

import httpx
import pytest
from support.artifacts import EXAMPLES, EXPECTED, ROWS, code_bearing_archive, corrupted_legacy_model
from support.mlserver_process import MLServerProcess

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
    evil = root / "hash-evil" / "model"
    evil.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(code_bearing_archive(str(evil), str(work / "pwned")))) as tar:
        tar.extractall(evil, filter="data")
    crash = root / "hash-crash" / "model"
    crash.mkdir(parents=True)
    (crash / "xgboost-model").write_bytes(corrupted_legacy_model())
    process = MLServerProcess(
        {
            "SAGEMAKER_MULTI_MODEL": "true",
            "MLSERVER_MME_HOSTING_ROOTS": str(root),
            "MLSERVER_MME_MAX_LOADED_MODELS": "2",
            # SageMaker's calls are not signed: SigV4 guards /invocations only
            "MLSERVER_MME_SIGV4_KEYS": "AKIDHOSTING:secret",
            "MLSERVER_MME_CACHE_DIR": str(work / "cache"),
            "MLSERVER_MME_MAX_PAYLOAD_BYTES": "4096",
        },
        str(work / "log"),
    ).start()
    process.root = root
    process.work = work
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


def assert_hosting_error(reply, status):
    """The model's own status and a plain message: SageMaker wraps it in its ModelError itself."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert list(body) == ["message"] and body["message"], body  # no ErrorCode, no OriginalStatusCode
    assert "x-amzn-errortype" not in reply.headers


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
    assert_hosting_error(reply, 404)
    assert "not loaded" in reply.json()["message"]


@pytest.fixture
def hosted(hosting):
    assert load(hosting, "m-errors", "Houston_TX").status_code == 200
    yield "m-errors"
    assert httpx.delete(hosting.url + "/models/m-errors").status_code == 200


@pytest.mark.parametrize(
    "body, content_type, accept, status",
    [
        (b"1995,not-a-number,3\n", "text/csv", "application/json", 400),  # unreadable CSV
        (b"1995,3000\n", "text/csv", "application/json", 400),  # the model rejects it: too few features
        (CSV, "application/x-unknown", "application/json", 415),
        (CSV, "text/csv", "image/png", 406),
        (b"1," * 2049, "text/csv", "application/json", 413),  # over MLSERVER_MME_MAX_PAYLOAD_BYTES
    ],
    ids=["bad-csv", "wrong-width", "content-type", "accept", "too-large"],
)
def test_invoke_errors_answer_the_models_own_status(hosting, hosted, body, content_type, accept, status):
    reply = httpx.post(
        f"{hosting.url}/models/{hosted}/invoke", content=body, headers={"Content-Type": content_type, "Accept": accept}
    )
    assert_hosting_error(reply, status)


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
    assert reply.headers["x-amzn-errortype"] and "Message" in reply.json()  # /invocations keeps the runtime's shape
    assert load(hosting, "m-signed", "Houston_TX").status_code == 200
    assert invoke(hosting, "m-signed", "Houston_TX.tar.gz").status_code == 200
    assert httpx.delete(hosting.url + "/models/m-signed").status_code == 200


def test_a_hosted_folder_naming_code_is_refused(hosting):
    reply = load(hosting, "evil", "evil")
    assert reply.status_code == 500
    assert "payload.Model" in reply.json()["message"]
    assert not (hosting.work / "pwned").exists()
    assert httpx.get(hosting.url + "/models/evil").status_code == 404


def test_a_hosted_model_that_crashes_xgboost_is_refused_and_the_container_lives(hosting):
    reply = load(hosting, "crash", "crash")
    assert reply.status_code == 500
    assert "failed its load check" in reply.json()["message"]
    assert hosting.process.poll() is None
    assert httpx.get(hosting.url + "/ping").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"model_name": "\\ud800", "url": "/opt/ml/models/x"}',
        b'{"model_name": "m", "url": "/opt/ml/models/x\\u0000y"}',
        b'{"model_name": "' + b"m" * 1025 + b'", "url": "/opt/ml/models/x"}',
    ],
)
def test_unprintable_or_overlong_names_are_refused(hosting, body):
    reply = httpx.post(hosting.url + "/models", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert "printable" in reply.json()["message"]
