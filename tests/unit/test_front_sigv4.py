"""SigV4Verifier.verify on requests signed with botocore, no server needed."""

import datetime
import hashlib

import boto3
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from support.signing import SignerLeavingOut

from mlserver_mme.front.sigv4 import SignatureRejected, SigV4Verifier

KEY, SECRET = "AKIDUNIT", "unit-secret"
HOST = "localhost:8080"
PATH = "/endpoints/any/invocations"
BODY = b"1995,3000,3,2,1.0,2\n"
OTHER_BODY = b"2000,3000,3,2,1.0,2\n"
TARGET = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"}


def signed(headers=TARGET, body=BODY, leave_out=()) -> dict:
    """The headers a server sees (lower-case names, with host) for a request botocore signed."""
    request = AWSRequest(method="POST", url=f"http://{HOST}{PATH}", data=body, headers=dict(headers))
    SignerLeavingOut(Credentials(KEY, SECRET), leave_out).add_auth(request)
    return {"host": HOST, **{name.lower(): value for name, value in request.headers.items()}}


def verify(headers, body=BODY, now=None) -> str:
    return SigV4Verifier({KEY: SECRET}).verify("POST", PATH, "", headers, body, now=now)


def rejected(headers, body=BODY, code="InvalidSignatureException", now=None) -> str:
    with pytest.raises(SignatureRejected) as caught:
        verify(headers, body, now)
    assert caught.value.sagemaker_code == code
    assert caught.value.sagemaker_status == 403
    return caught.value.message


# Valid requests


def test_botocore_signed_request_without_content_sha256():
    assert verify(signed()) == KEY


def test_botocore_signed_request_with_a_signed_content_sha256_of_the_body():
    headers = signed({**TARGET, "X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()})
    assert "x-amz-content-sha256" in headers["authorization"]
    assert verify(headers) == KEY


def test_empty_body():
    assert verify(signed(body=b""), body=b"") == KEY


def test_headers_an_http_client_adds_unsigned_are_fine():
    # httpx and requests add these; boto3 signs Accept when it sends one, hand-made clients often do not.
    headers = {**signed(), "accept": "*/*", "user-agent": "python-httpx", "accept-encoding": "gzip"}
    assert verify(headers) == KEY


def boto3_request(**params):
    """The request boto3 sends for invoke_endpoint, caught before it leaves."""
    client = boto3.client(
        "sagemaker-runtime", endpoint_url=f"http://{HOST}", region_name="us-east-1",
        aws_access_key_id=KEY, aws_secret_access_key=SECRET,
    )
    caught = {}

    def catch(request, **_):
        caught["request"] = request
        raise RuntimeError("caught")

    client.meta.events.register("before-send", catch)
    with pytest.raises(RuntimeError, match="caught"):
        client.invoke_endpoint(EndpointName="any", Body=BODY, **params)
    request = caught["request"]
    headers = {name.lower(): value.decode() if isinstance(value, bytes) else value
               for name, value in request.headers.items()}
    return {"host": HOST, **headers}


def test_boto3_invoke_endpoint_passes_and_signs_what_the_rules_require():
    headers = boto3_request(
        TargetModel="Houston_TX.tar.gz", ContentType="text/csv", Accept="application/json",
        CustomAttributes="c=1", InferenceId="i-1",
    )
    assert verify(headers) == KEY
    signed_headers = headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert signed_headers == (
        "accept;content-type;host;x-amz-date;x-amzn-sagemaker-custom-attributes;"
        "x-amzn-sagemaker-inference-id;x-amzn-sagemaker-target-model"
    )
    assert "x-amz-content-sha256" not in headers  # boto3 sends none for SageMaker


def test_boto3_invoke_endpoint_with_target_content_type_and_accept():
    headers = boto3_request(TargetModel="Houston_TX.tar.gz", ContentType="text/csv", Accept="application/json")
    assert verify(headers) == KEY
    assert "SignedHeaders=accept;content-type;host;x-amz-date;x-amzn-sagemaker-target-model," in headers[
        "authorization"
    ]


# The body is bound


def test_body_swapped_under_a_signed_content_sha256_is_refused():
    headers = signed({**TARGET, "X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()})
    assert "sha256 of the body" in rejected(headers, body=OTHER_BODY)


def test_body_altered_after_signing_is_refused():
    assert "does not match" in rejected(signed(), body=OTHER_BODY)


def test_unsigned_content_sha256_that_is_not_the_body_hash_is_refused():
    headers = {**signed(), "x-amz-content-sha256": hashlib.sha256(OTHER_BODY).hexdigest()}
    assert "sha256 of the body" in rejected(headers)


@pytest.mark.parametrize("value", ["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                                   "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"])
def test_signed_unsigned_or_streaming_payload_is_refused(value):
    headers = signed({**TARGET, "X-Amz-Content-SHA256": value})
    assert "x-amz-content-sha256" in headers["authorization"]  # signed, as the attacker needs
    assert "UNSIGNED-PAYLOAD or STREAMING-*" in rejected(headers)
    assert "UNSIGNED-PAYLOAD or STREAMING-*" in rejected(headers, body=OTHER_BODY)


# The headers that matter are bound


def test_target_model_added_after_signing_is_refused():
    headers = {**signed({"Content-Type": "text/csv"}), "x-amzn-sagemaker-target-model": "LosAngeles_CA.tar.gz"}
    assert rejected(headers) == "The header 'x-amzn-sagemaker-target-model' must be signed."


def test_target_model_left_out_of_signed_headers_is_refused():
    headers = signed(leave_out=["x-amzn-sagemaker-target-model"])
    assert rejected(headers) == "The header 'x-amzn-sagemaker-target-model' must be signed."


def test_target_model_changed_after_signing_is_refused():
    headers = {**signed(), "x-amzn-sagemaker-target-model": "LosAngeles_CA.tar.gz"}
    assert "does not match" in rejected(headers)


@pytest.mark.parametrize("name", ["x-amzn-sagemaker-custom-attributes", "x-amzn-sagemaker-inference-id",
                                  "x-amzn-sagemaker-target-variant"])
def test_any_sagemaker_header_added_after_signing_is_refused(name):
    assert rejected({**signed(), name: "x"}) == f"The header '{name}' must be signed."


def test_content_type_added_after_signing_is_refused():
    headers = {**signed({"X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"}), "content-type": "application/json"}
    assert rejected(headers) == "The header 'content-type' must be signed."


@pytest.mark.parametrize("name", ["host", "x-amz-date"])
def test_host_and_date_must_be_signed(name):
    assert rejected(signed(leave_out=[name])) == f"The header '{name}' must be signed."


def test_signed_header_missing_from_the_request_is_refused():
    headers = signed()
    del headers["x-amzn-sagemaker-target-model"]
    del headers["content-type"]
    assert "missing" in rejected(headers)


# What was already there


def test_no_authorization():
    rejected({"host": HOST}, code="MissingAuthenticationTokenException")


def test_malformed_authorization():
    rejected({**signed(), "authorization": "AWS4-HMAC-SHA256 nonsense"}, code="IncompleteSignatureException")


def test_unknown_key():
    headers = signed()
    headers["authorization"] = headers["authorization"].replace(KEY, "AKIDUNKNOWN")
    rejected(headers, code="UnrecognizedClientException")


def test_wrong_secret():
    with pytest.raises(SignatureRejected) as caught:
        SigV4Verifier({KEY: "another-secret"}).verify("POST", PATH, "", signed(), BODY)
    assert caught.value.sagemaker_code == "InvalidSignatureException"
    assert "does not match" in caught.value.message


def test_15_minutes_of_skew_either_way():
    headers = signed()
    signed_at = datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    for offset in (datetime.timedelta(minutes=14), -datetime.timedelta(minutes=14)):
        assert verify(headers, now=signed_at + offset) == KEY
    for offset in (datetime.timedelta(minutes=16), -datetime.timedelta(minutes=16)):
        assert "expired" in rejected(headers, now=signed_at + offset)
