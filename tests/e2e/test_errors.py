"""Every error row of the README's table, as boto3 and plain HTTP clients see it."""

import json

import botocore.exceptions
import httpx
import pytest
from support.artifacts import EXPECTED
from support.clients import invoke
from support.s3server import BUCKET, PREFIX

CSV = b"1995,3000,3,2,1.0,2\n"
# an npy header declaring 10^16 float64 values, followed by none of them
NPY_HUGE_SHAPE = b"\x93NUMPY\x01\x00v\x00" + b"{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000000000,), }".ljust(117) + b"\n"


def client_error(sagemaker, **kwargs) -> botocore.exceptions.ClientError:
    kwargs.setdefault("ContentType", "text/csv")
    kwargs.setdefault("Body", CSV)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        sagemaker.invoke_endpoint(EndpointName="any", **kwargs)
    return caught.value


def assert_sagemaker_error(reply, code, status):
    assert reply.status_code == status, reply.text
    assert reply.headers["x-amzn-errortype"] == code
    assert len(reply.headers["x-amzn-requestid"]) == 36
    body = reply.json()
    assert body["Message"]
    assert "Traceback" not in reply.text
    return body


def test_missing_target_model_header(sagemaker):
    error = client_error(sagemaker)
    assert error.response["Error"]["Code"] == "ValidationError"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "missing a target model header" in error.response["Error"]["Message"]


@pytest.mark.parametrize(
    "target",
    [
        "../escape.tar.gz",
        "a/../../escape.tar.gz",
        "a/./b.tar.gz",
        "/etc/passwd",
        "a\\..\\b.tar.gz",
        "a//b.tar.gz",
        "trailing/",
        "x" * 1025,
        "",
    ],
)
def test_invalid_target_never_touches_storage(server, s3, target):
    before = s3.total()
    body = assert_sagemaker_error(invoke(server, target), "ValidationError", 400)
    assert "target model" in body["Message"]
    assert s3.total() == before


def test_longest_valid_target_is_looked_up(server):
    target = "x" * 1017 + ".tar.gz"
    body = assert_sagemaker_error(invoke(server, target), "ValidationError", 400)
    assert f"s3://{BUCKET}/{PREFIX}{target}" in body["Message"]


def test_unknown_model_names_bucket_and_key(sagemaker):
    error = client_error(sagemaker, TargetModel="nowhere/Atlantis.tar.gz")
    assert error.response["Error"]["Code"] == "ValidationError"
    assert f"s3://{BUCKET}/{PREFIX}nowhere/Atlantis.tar.gz" in error.response["Error"]["Message"]


@pytest.mark.parametrize(
    "target, reason",
    [
        ("broken/corrupt.tar.gz", "corrupt or truncated"),
        ("broken/truncated.tar.gz", "corrupt or truncated"),
        ("broken/not-a-model.tar.gz", "could not load"),
        ("broken/two-files.tar.gz", "no XGBoost model file"),
        ("broken/traversal.tar.gz", "unsafe archive member"),
        ("broken/absolute.tar.gz", "unsafe archive member"),
        ("broken/symlink.tar.gz", "unsafe archive member"),
        ("broken/pickle.tar.gz", "MLSERVER_MME_ALLOW_PICKLE"),
        ("broken/bad-settings.tar.gz", "model-settings.json of 'broken/bad-settings.tar.gz' is not valid"),
        ("broken/missing-runtime.tar.gz", "no_such_module"),
    ],
)
def test_broken_artifact_is_a_model_error_and_others_keep_serving(sagemaker, target, reason):
    error = client_error(sagemaker, TargetModel=target)
    assert error.response["Error"]["Code"] == "ModelError"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error.response["OriginalStatusCode"] == 500
    assert reason in error.response["OriginalMessage"]
    assert "Received server error (500)" in error.response["Error"]["Message"]
    reply = sagemaker.invoke_endpoint(EndpointName="any", TargetModel="Houston_TX.tar.gz", ContentType="text/csv", Body=CSV)
    assert json.loads(reply["Body"].read()) == EXPECTED["predictions"]["Houston_TX.tar.gz"][:1]


@pytest.mark.parametrize(
    "headers, body, status, reason",
    [
        ({"Content-Type": "text/csv"}, b"1995,abc,3,2,1,2\n", 400, "not valid text/csv"),
        ({"Content-Type": "text/csv"}, b"1995,3000,3\n", 400, "takes 6 features"),
        ({"Content-Type": "text/csv"}, b"1,2,3,4,5,6\n1,2\n", 400, "same number of values"),
        ({"Content-Type": "text/csv"}, b"", 400, "empty"),
        ({"Content-Type": "application/json"}, b"{not json", 400, "not valid application/json"),
        ({"Content-Type": "application/x-npy"}, b"\x93NUMPY garbage", 400, "not valid application/x-npy"),
        ({"Content-Type": "application/x-recordio-protobuf"}, b"\x00" * 12, 400, "bad magic number"),
        ({"Content-Type": "text/libsvm"}, b"0 1:2 x:3\n", 400, "not valid text/libsvm"),
        ({"Content-Type": "text/libsvm"}, b"0 7:2\n", 400, "takes 6 features"),
        ({"Content-Type": "image/png"}, CSV, 415, "image/png"),
        ({"Content-Type": "text/csv", "Accept": "image/png"}, CSV, 406, "image/png"),
        # hostile bodies: bounded, answered as the caller's fault, never a 500
        ({"Content-Type": "text/libsvm"}, b"0 99999999999999999999:1\n", 400, "feature index must be in"),
        ({"Content-Type": "text/libsvm"}, b"0\n" * 1_000_000, 400, "no features"),
        ({"Content-Type": "application/json"}, b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        ({"Content-Type": "application/x-npy"}, NPY_HUGE_SHAPE, 400, "more than 1048576 features"),
    ],
)
def test_payload_the_model_cannot_handle_is_a_client_model_error(server, headers, body, status, reason):
    reply = httpx.post(
        server.url + "/invocations",
        content=body,
        headers={**headers, "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"},
    )
    answer = assert_sagemaker_error(reply, "ModelError", 424)
    assert answer["OriginalStatusCode"] == status
    assert reason in answer["OriginalMessage"]
    assert answer["Message"].startswith(f"Received client error ({status})")


def test_v2_unknown_model_is_404(server):
    reply = httpx.post(server.url + "/v2/repository/models/nowhere/load")
    assert reply.status_code == 404
    reply = httpx.post(server.url + "/v2/models/nowhere/infer", json={"inputs": []})
    assert reply.status_code == 404


def test_v2_name_no_path_maps_to_is_404_without_storage(server, s3):
    before = s3.total()
    reply = httpx.post(server.url + "/v2/repository/models/bad~name/load")
    assert reply.status_code == 404
    assert s3.total() == before


def test_a_400_digit_json_number_is_read_as_float_reads_it(server):
    reply = httpx.post(
        server.url + "/invocations",
        content=b"[" + b"9" * 400 + b", 3000, 3, 2, 1.0, 2]",
        headers={"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"},
    )
    assert reply.status_code == 200, reply.text
    assert len(reply.json()) == 1
