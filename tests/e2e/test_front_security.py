"""SigV4 verification, the admin token and request limits, with a real server."""

import datetime
import hashlib
import os
import subprocess
import sys
from unittest import mock

import boto3
import botocore.auth
import botocore.exceptions
import httpx
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from support.artifacts import EXPECTED
from support.mlserver_process import MLServerProcess
from support.s3server import s3_env
from support.signing import SignerLeavingOut

CSV = b"1995,3000,3,2,1.0,2\n"
KEY, SECRET = "AKIDMMETEST", "the-secret"
TOKEN = "admin-token-1"


@pytest.fixture(scope="module")
def secured(s3, tmp_path_factory):
    work = tmp_path_factory.mktemp("secured")
    keys_file = work / "keys"
    keys_file.write_text(f"# mounted secret\n{KEY}:{SECRET}\n")
    process = MLServerProcess(
        {
            **s3_env(s3),
            "MLSERVER_MME_CACHE_DIR": str(work / "cache"),
            "MLSERVER_MME_SIGV4_KEYS": "AKIDOTHER:other-secret",
            "MLSERVER_MME_SIGV4_KEYS_FILE": str(keys_file),
            "MLSERVER_MME_ADMIN_TOKEN": TOKEN,
            "MLSERVER_MME_MAX_PAYLOAD_BYTES": "4096",
        },
        str(work / "log"),
    ).start()
    yield process
    process.stop()


def runtime(server, key=KEY, secret=SECRET):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=boto3.session.Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def invoke(client, target="Houston_TX.tar.gz", body=CSV):
    reply = client.invoke_endpoint(EndpointName="any", TargetModel=target, ContentType="text/csv", Body=body)
    return reply["Body"].read()


def rejected(client, code, **kwargs):
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        invoke(client, **kwargs)
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return caught.value.response["Error"]["Message"]


def signed_request(
    server, body=CSV, target="Chicago_IL.tar.gz", key=KEY, secret=SECRET, extra_headers=(), leave_out=()
) -> AWSRequest:
    """A request signed with botocore; ``target=None`` signs none, ``leave_out`` keeps headers out of the signature."""
    headers = {"Content-Type": "text/csv", **dict(extra_headers)}
    if target is not None:
        headers["X-Amzn-SageMaker-Target-Model"] = target
    request = AWSRequest(method="POST", url=server.url + "/endpoints/any/invocations", data=body, headers=headers)
    SignerLeavingOut(Credentials(key, secret), leave_out).add_auth(request)
    return request


def refused_before_s3(server, s3, request: AWSRequest, body=None, **header_changes) -> str:
    """Send ``request`` (changed); it must get 403 InvalidSignatureException and reach no storage."""
    before = s3.total()
    reply = send(server, request, body, **header_changes)
    assert reply.status_code == 403, reply.text
    assert reply.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert s3.total() == before
    return reply.json()["Message"]


def send(server, request: AWSRequest, body=None, **header_changes):
    headers = {**dict(request.headers.items()), **header_changes}
    return httpx.post(request.url, content=request.body if body is None else body, headers=headers)


def test_boto3_with_a_configured_key_gets_in(secured):
    assert invoke(runtime(secured)) == b"[" + str(EXPECTED["predictions"]["Houston_TX.tar.gz"][0]).encode() + b"]"


def test_keys_from_the_environment_and_the_file_both_work(secured):
    assert invoke(runtime(secured, "AKIDOTHER", "other-secret")).startswith(b"[")


def test_aws_cli_with_a_configured_key_gets_in(secured, tmp_path):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run(
        [sys.executable, "-m", "awscli", "sagemaker-runtime", "invoke-endpoint", "--endpoint-url", secured.url,
         "--endpoint-name", "any", "--target-model", "Houston_TX.tar.gz", "--content-type", "text/csv",
         "--body", "1995,3000,3,2,1.0,2", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_bytes().startswith(b"[")


def test_signed_request_rebuilt_by_hand_gets_in(secured):
    reply = send(secured, signed_request(secured))
    assert reply.status_code == 200, reply.text


def test_no_signature(secured, s3):
    before = s3.total()
    reply = httpx.post(
        secured.url + "/invocations", content=CSV,
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "NewYork_NY.tar.gz"},
    )
    assert reply.status_code == 403
    assert reply.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert s3.total() == before


def test_unknown_key(secured):
    rejected(runtime(secured, key="AKIDUNKNOWN"), "UnrecognizedClientException")


def test_wrong_secret(secured):
    rejected(runtime(secured, secret="not-the-secret"), "InvalidSignatureException")


def test_request_older_than_15_minutes(secured):
    past = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=16)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=past):
        message = rejected(runtime(secured), "InvalidSignatureException")
    assert "expired" in message


def test_body_altered_after_signing(secured, s3):
    before = s3.total()
    reply = send(secured, signed_request(secured, target="LosAngeles_CA.tar.gz"), body=b"2000,3000,3,2,1.0,2\n")
    assert reply.status_code == 403
    assert reply.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert s3.total() == before


def test_signed_header_altered_after_signing(secured, s3):
    before = s3.total()
    reply = send(secured, signed_request(secured), **{"X-Amzn-SageMaker-Target-Model": "LosAngeles_CA.tar.gz"})
    assert reply.status_code == 403
    assert reply.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert s3.total() == before


def test_signed_content_sha256_of_the_body_gets_in(secured):
    request = signed_request(secured, target="Houston_TX.tar.gz",
                             extra_headers={"X-Amz-Content-SHA256": hashlib.sha256(CSV).hexdigest()})
    reply = send(secured, request)
    assert reply.status_code == 200, reply.text


def test_body_swapped_under_a_signed_content_sha256(secured, s3):
    # A replay within the 15 minutes: same signature and X-Amz-Content-SHA256, another body.
    request = signed_request(secured, target="NewYork_NY.tar.gz",
                             extra_headers={"X-Amz-Content-SHA256": hashlib.sha256(CSV).hexdigest()})
    assert "x-amz-content-sha256" in request.headers["Authorization"]
    message = refused_before_s3(secured, s3, request, body=b"2000,3000,3,2,1.0,2\n")
    assert "X-Amz-Content-SHA256" in message


def test_signed_unsigned_payload(secured, s3):
    request = signed_request(secured, target="LosAngeles_CA.tar.gz",
                             extra_headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert "UNSIGNED-PAYLOAD" in refused_before_s3(secured, s3, request)


def test_target_model_added_after_signing(secured, s3):
    request = signed_request(secured, target=None)
    message = refused_before_s3(
        secured, s3, request, **{"X-Amzn-SageMaker-Target-Model": "northeast/Boston_MA.tar.gz"}
    )
    assert message == "The header 'x-amzn-sagemaker-target-model' must be signed."


def test_x_amz_date_left_out_of_signed_headers(secured, s3):
    request = signed_request(secured, target="LosAngeles_CA.tar.gz", leave_out=["x-amz-date"])
    assert "SignedHeaders=content-type;host;x-amzn-sagemaker-target-model," in request.headers["Authorization"]
    assert refused_before_s3(secured, s3, request) == "The header 'x-amz-date' must be signed."


def test_ping_needs_no_signature(secured):
    assert httpx.get(secured.url + "/ping").status_code == 200


def test_management_routes_need_the_admin_token(secured):
    assert httpx.post(secured.url + "/v2/repository/index", json={}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(secured.url + "/v2/repository/models/Houston_TX/load", headers=wrong).status_code == 401
    reply = httpx.post(secured.url + "/v2/repository/index", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200
    assert httpx.post(secured.url + "/v2/models/nowhere/infer", json={"inputs": []}).status_code == 404


def test_body_over_the_limit_is_refused(secured):
    client = runtime(secured)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        invoke(client, body=b"1," * 3000)
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_streamed_body_over_the_limit_is_refused_without_content_length(secured):
    def chunks():
        for _ in range(100):
            yield b"1," * 100

    reply = httpx.post(
        secured.url + "/invocations", content=chunks(),
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"},
    )
    assert reply.status_code == 413
    assert reply.headers["x-amzn-errortype"] == "ValidationError"


def test_default_limit_is_sagemakers_6_mb(server):
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"}
    reply = httpx.post(server.url + "/invocations", content=b"1" * (6 * 1024 * 1024 + 1), headers=headers)
    assert reply.status_code == 413
    assert "6291456" in reply.json()["Message"]


def test_oversized_headers_and_custom_attributes(server):
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"}
    reply = httpx.post(server.url + "/invocations", content=CSV, headers={**headers, "X-Padding": "x" * 20000})
    assert reply.status_code == 413
    reply = httpx.post(
        server.url + "/invocations", content=CSV, headers={**headers, "X-Amzn-SageMaker-Custom-Attributes": "a" * 1025}
    )
    assert reply.status_code == 400
    assert reply.headers["x-amzn-errortype"] == "ValidationError"
