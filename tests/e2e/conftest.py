"""Fixtures of the end-to-end tests: moto's S3 server and ``mlserver start`` processes.

Every test under this folder is marked ``e2e``: ``pytest -m "not e2e"`` runs the unit tests alone.
"""

import pathlib

import boto3
import pytest
from support.artifacts import build
from support.mlserver_process import MLServerProcess, servers_started
from support.s3server import BUCKET, CREDENTIALS, PREFIX, CountingS3Server, boto3_credentials, s3_env

HERE = pathlib.Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by markers
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in pathlib.Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def artifacts():
    return build()


@pytest.fixture(scope="session")
def s3(artifacts):
    """Moto's S3 server on loopback, holding every test artifact under s3://models/mme/."""
    server = CountingS3Server().start()
    client = boto3.client("s3", endpoint_url=server.url, **boto3_credentials())
    client.create_bucket(Bucket=BUCKET)
    for target, data in artifacts.items():
        client.put_object(Bucket=BUCKET, Key=PREFIX + target, Body=data)
    server.client = client
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server(s3, tmp_path_factory):
    """One mlserver process serving s3://models/mme/, shared by the end-to-end tests."""
    work = tmp_path_factory.mktemp("server")
    process = MLServerProcess(
        {**s3_env(s3), "MLSERVER_MME_CACHE_DIR": str(work / "cache")}, str(work / "mlserver.log")
    ).start()
    yield process
    process.stop()
    print(process.log()[-5000:])


@pytest.fixture(scope="session")
def sagemaker(server):
    """An unmodified boto3 sagemaker-runtime client pointed at the server."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=server.url,
        config=boto3.session.Config(retries={"max_attempts": 1, "mode": "standard"}),
        **boto3_credentials(),
    )


@pytest.fixture
def prefix(s3, request):
    """A fresh key prefix for this test, with put() to store artifacts under it."""
    name = f"life/{request.node.name}/"

    class Prefix:
        key = name

        def put(self, target: str, data: bytes) -> None:
            s3.client.put_object(Bucket=BUCKET, Key=name + target, Body=data)

        def gets(self, target: str) -> int:
            return s3.count("GET", f"/{BUCKET}/{name}{target}")

        def heads(self, target: str) -> int:
            return s3.count("HEAD", f"/{BUCKET}/{name}{target}")

    return Prefix()


@pytest.fixture
def start_server(s3, prefix, tmp_path):
    with servers_started(CREDENTIALS, s3.url, f"s3://{BUCKET}/{prefix.key}", tmp_path) as start:
        yield start
