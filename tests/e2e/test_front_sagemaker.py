"""SageMaker runtime clients against a real server and a real S3 endpoint."""

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from support.artifacts import EXPECTED, ROWS, example_targets, legacy_model_bytes, predict
from support.recordio_writer import dense_records
from support.s3server import BUCKET, PREFIX

CSV_BODY = "".join(",".join(map(str, row)) + "\n" for row in ROWS).encode()


def invoke(sagemaker, target, body=CSV_BODY, **kwargs):
    kwargs.setdefault("ContentType", "text/csv")
    reply = sagemaker.invoke_endpoint(EndpointName="any", TargetModel=target, Body=body, **kwargs)
    return reply, reply["Body"].read()


@pytest.mark.parametrize("target", example_targets())
def test_boto3_predictions_equal_xgboost_1_7_6_bit_for_bit(sagemaker, target):
    reply, body = invoke(sagemaker, target)
    assert reply["ContentType"] == "application/json"
    assert reply["InvokedProductionVariant"] == "AllTraffic"
    assert json.loads(body) == EXPECTED["predictions"][target]


def test_the_aws_sample_client_reads_one_price(sagemaker):
    features = [1995, 3000, 3, 2.0, 1.0, 2]
    reply, body = invoke(sagemaker, "Houston_TX.tar.gz", body=",".join(map(str, features)) + "\n")
    assert json.loads(body)[0] == EXPECTED["predictions"]["Houston_TX.tar.gz"][0]


@pytest.mark.parametrize(
    "target",
    [
        "formats/json-as-xgboost-model.tar.gz",
        "formats/ubj-as-xgboost-model.tar.gz",
        "formats/model-json.tar.gz",
        "formats/model-ubj.tar.gz",
        "formats/model-bst.tar.gz",
        "formats/legacy.tgz",
        "formats/plain.tar",
        "formats/bare-model.json",
        "formats/xgboost-model",
    ],
)
def test_every_xgboost_artifact_format_predicts_the_same(sagemaker, target):
    reply, body = invoke(sagemaker, target)
    assert json.loads(body) == EXPECTED["predictions"]["Houston_TX.tar.gz"]


def test_accept_csv_joins_predictions(sagemaker):
    reply, body = invoke(sagemaker, "Chicago_IL.tar.gz", Accept="text/csv")
    assert reply["ContentType"] == "text/csv"
    assert [float(v) for v in body.decode().split(",")] == EXPECTED["predictions"]["Chicago_IL.tar.gz"]


@pytest.mark.parametrize("accept", ["*/*", "application/json", "application/json; charset=utf-8", "text/html, */*;q=0.8"])
def test_json_is_the_default_response(sagemaker, accept):
    reply, body = invoke(sagemaker, "Chicago_IL.tar.gz", Accept=accept)
    assert reply["ContentType"] == "application/json"
    assert json.loads(body) == EXPECTED["predictions"]["Chicago_IL.tar.gz"]


def _npy(rows):
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(rows, dtype=np.float32))
    return buffer.getvalue()


def _libsvm(rows, label=True):
    return "".join(
        ("0 " if label else "") + " ".join(f"{i}:{v}" for i, v in enumerate(row)) + "\n" for row in rows
    ).encode()


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("text/csv; charset=utf-8", CSV_BODY),
        ("application/json", json.dumps(ROWS).encode()),
        ("application/x-npy", _npy(ROWS)),
        ("text/libsvm", _libsvm(ROWS)),
        ("text/x-libsvm", _libsvm(ROWS, label=False)),
        ("application/x-recordio-protobuf", dense_records(np.asarray(ROWS, dtype=np.float32))),
    ],
)
def test_request_content_types(sagemaker, content_type, body):
    reply, answer = invoke(sagemaker, "LosAngeles_CA.tar.gz", body=body, ContentType=content_type)
    assert json.loads(answer) == EXPECTED["predictions"]["LosAngeles_CA.tar.gz"]


BATCH_ROWS = np.random.default_rng(7).normal([1995, 3000, 4, 2, 1, 1.5], [10, 750, 1, 0.5, 0.25, 1], (20_000, 6)).round(2)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("text/csv", "".join(",".join(map(str, row)) + "\n" for row in BATCH_ROWS.tolist()).encode()),
        ("application/json", json.dumps(BATCH_ROWS.tolist()).encode()),
        ("application/x-npy", _npy(BATCH_ROWS)),
        ("text/libsvm", _libsvm(BATCH_ROWS.tolist())),
        ("application/x-recordio-protobuf", dense_records(BATCH_ROWS.astype(np.float32))),
    ],
)
def test_batches_worked_off_the_event_loop_predict_as_xgboost(sagemaker, content_type, body):
    assert len(body) > 64 * 1024  # over the inline threshold: decoded, predicted and encoded in the batch pool
    for accept in ("application/json", "text/csv"):
        reply, answer = invoke(sagemaker, "Houston_TX.tar.gz", body=body, ContentType=content_type, Accept=accept)
        values = json.loads(answer) if accept == "application/json" else [float(v) for v in answer.split(b",")]
        assert values == predict(legacy_model_bytes("Houston_TX.tar.gz"), BATCH_ROWS.astype(np.float32))


def test_batches_and_single_rows_racing_on_one_model_all_get_xgboosts_answers(server):
    """Batches predict in pool threads while one-row requests predict on the loop, on one model at once."""
    batch = "".join(",".join(map(str, row)) + "\n" for row in BATCH_ROWS.tolist()).encode()
    expected_batch = predict(legacy_model_bytes("Houston_TX.tar.gz"), BATCH_ROWS.astype(np.float32))
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"}

    def call(body):
        return httpx.post(server.url + "/invocations", content=body, headers=headers, timeout=60).json()

    bodies = [batch, CSV_BODY] * 8
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, bodies))
    assert answers == [expected_batch, EXPECTED["predictions"]["Houston_TX.tar.gz"]] * 8


def test_a_bad_batch_is_the_callers_fault(server):
    body = b"1995,3000,3,2,1.0,2\n" * 5000 + b"1995,abc,3,2,1.0,2\n"
    reply = httpx.post(server.url + "/invocations", content=body,
                       headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz"})
    assert reply.status_code == 424
    assert reply.json()["OriginalStatusCode"] == 400


def test_libsvm_is_the_default_without_content_type(server):
    reply = httpx.post(
        server.url + "/invocations",
        content=_libsvm(ROWS),
        headers={"X-Amzn-SageMaker-Target-Model": "NewYork_NY.tar.gz"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == EXPECTED["predictions"]["NewYork_NY.tar.gz"]


def test_libsvm_with_missing_features_matches_xgboost(sagemaker):
    # Row 0 omits feature 4 (LOT_ACRES) and 5: xgboost treats them as missing, like SageMaker's DMatrix.
    body = b"0 0:1995 1:3000 2:3 3:2\n"
    reply, answer = invoke(sagemaker, "Houston_TX.tar.gz", body=body, ContentType="text/libsvm")
    expected = predict(legacy_model_bytes(), [[1995, 3000, 3, 2, np.nan, np.nan]])
    assert json.loads(answer) == expected


@pytest.mark.parametrize("path", ["/invocations", "/endpoints/my-endpoint/invocations", "/endpoints/a%2Fb/invocations"])
def test_plain_http_paths(server, path):
    reply = httpx.post(
        server.url + path,
        content=CSV_BODY,
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "northeast/Boston_MA.tar.gz"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-amzn-invoked-production-variant"] == "AllTraffic"
    assert len(reply.headers["x-amzn-requestid"]) == 36
    assert reply.json() == EXPECTED["predictions"]["northeast/Boston_MA.tar.gz"]


def test_ping(server):
    reply = httpx.get(server.url + "/ping")
    assert reply.status_code == 200


def test_aws_cli_invoke_endpoint(server, tmp_path):
    out = tmp_path / "out.json"
    payload = tmp_path / "payload.csv"
    payload.write_bytes(CSV_BODY)
    env = {**os.environ, **s3_env_credentials()}
    result = subprocess.run(
        [
            sys.executable, "-m", "awscli", "sagemaker-runtime", "invoke-endpoint",
            "--endpoint-url", server.url, "--endpoint-name", "any",
            "--target-model", "northeast/Boston_MA.tar.gz",
            "--content-type", "text/csv", "--body", f"fileb://{payload}", str(out),
        ],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["InvokedProductionVariant"] == "AllTraffic"
    assert json.loads(out.read_bytes()) == EXPECTED["predictions"]["northeast/Boston_MA.tar.gz"]


def test_aws_cli_shows_the_error_code(server, tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "awscli", "sagemaker-runtime", "invoke-endpoint",
            "--endpoint-url", server.url, "--endpoint-name", "any", "--target-model", "nowhere.tar.gz",
            "--content-type", "text/csv", "--body", "1,2", str(tmp_path / "out"),
        ],
        capture_output=True, text=True, env={**os.environ, **s3_env_credentials()}, timeout=60,
    )
    assert result.returncode != 0
    assert "(ValidationError)" in result.stderr
    assert f"s3://{BUCKET}/{PREFIX}nowhere.tar.gz" in result.stderr


def s3_env_credentials():
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def test_concurrent_cold_requests_download_once(server, s3):
    target = "once/concurrent.tar.gz"
    key = f"/{BUCKET}/{PREFIX}{target}"
    before = s3.count("GET", key)

    def call(_):
        return httpx.post(
            server.url + "/invocations",
            content=CSV_BODY,
            headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target},
            timeout=60,
        )

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(call, range(16)))
    assert [r.status_code for r in replies] == [200] * 16
    assert all(r.json() == EXPECTED["predictions"]["Houston_TX.tar.gz"] for r in replies)
    assert s3.count("GET", key) - before == 1


def test_custom_runtime_named_by_the_archive(sagemaker):
    reply, body = invoke(sagemaker, "custom/doubler.tar.gz")
    assert json.loads(body) == [2 * sum(row) for row in ROWS]
