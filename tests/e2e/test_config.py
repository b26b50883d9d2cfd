"""Servers started with other settings: the defaults, a local folder, a dead S3 endpoint."""

import os
import pickle

import httpx
import pytest
from support.artifacts import EXPECTED, booster, example_bytes, tar_bytes
from support.clients import invoke
from support.mlserver_process import MLServerProcess, free_port
from support.s3server import CREDENTIALS


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """``mlserver start model-settings/`` with no MMEsetting at all but the cache folder."""
    work = tmp_path_factory.mktemp("default")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLSERVER_MME_")}
    process = MLServerProcess({**env, "MLSERVER_MME_CACHE_DIR": str(work / "cache")}, str(work / "log"))
    process.env.pop("MLSERVER_MME_MODEL_PREFIX", None)
    yield process.start()
    process.stop()


def test_default_settings_serve_the_bundled_examples(default_server):
    for target in ("Houston_TX.tar.gz", "northeast/Boston_MA.tar.gz"):
        reply = invoke(default_server, target)
        assert reply.status_code == 200, reply.text
        assert reply.json() == EXPECTED["predictions"][target][:1]


@pytest.fixture(scope="module")
def folder_server(tmp_path_factory):
    """A ``file://`` prefix holding a pickle (allowed here) and a symlink leading out of the folder."""
    work = tmp_path_factory.mktemp("folder")
    models, outside = work / "models", work / "outside"
    models.mkdir()
    outside.mkdir()
    (models / "Houston_TX.tar.gz").write_bytes(example_bytes("Houston_TX.tar.gz"))
    (models / "pickled.tar.gz").write_bytes(tar_bytes({"xgboost-model": pickle.dumps(booster())}))
    (outside / "secret.tar.gz").write_bytes(example_bytes("Chicago_IL.tar.gz"))
    os.symlink(outside / "secret.tar.gz", models / "escape.tar.gz")
    process = MLServerProcess(
        {
            "MLSERVER_MME_MODEL_PREFIX": f"file://{models}",
            "MLSERVER_MME_CACHE_DIR": str(work / "cache"),
            "MLSERVER_MME_ALLOW_PICKLE": "true",
        },
        str(work / "log"),
    )
    yield process.start()
    process.stop()


def test_local_folder_prefix(folder_server):
    reply = invoke(folder_server, "Houston_TX.tar.gz")
    assert reply.status_code == 200
    assert reply.json() == EXPECTED["predictions"]["Houston_TX.tar.gz"][:1]


def test_pickle_loads_when_allowed(folder_server):
    reply = invoke(folder_server, "pickled.tar.gz")
    assert reply.status_code == 200, reply.text
    assert reply.json() == EXPECTED["predictions"]["Houston_TX.tar.gz"][:1]


@pytest.mark.parametrize("target", ["escape.tar.gz", "../outside/secret.tar.gz"])
def test_nothing_outside_the_folder_is_served(folder_server, target):
    reply = invoke(folder_server, target)
    assert reply.status_code == 400
    assert reply.headers["x-amzn-errortype"] == "ValidationError"


@pytest.fixture(scope="module")
def dead_storage_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("dead")
    process = MLServerProcess(
        {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}",  # nothing listens there
            "MLSERVER_MME_MODEL_PREFIX": "s3://models/mme/",
            "MLSERVER_MME_CACHE_DIR": str(work / "cache"),
        },
        str(work / "log"),
    )
    yield process.start()
    process.stop()


def test_unreachable_storage_is_a_retryable_service_unavailable(dead_storage_server):
    reply = invoke(dead_storage_server, "Houston_TX.tar.gz")
    assert reply.status_code == 503
    assert reply.headers["x-amzn-errortype"] == "ServiceUnavailable"
    assert "unavailable" in reply.json()["Message"]
    assert httpx.get(dead_storage_server.url + "/ping").status_code == 200
