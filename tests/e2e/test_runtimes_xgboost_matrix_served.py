"""Models written by other XGBoost versions, served by a real server: every body format and V2 answer
what the training version predicted, and what the server cannot vouch for is refused by name."""

import json
import os

import httpx
import numpy as np
import pytest
from support.artifacts import tar_bytes
from support.clients import invoke
from support.matrix import MANIFEST, MATRIX, MATRIX_ROWS
from support.serving import model_error

from mlserver_mme.naming import v2_name

SERVED = [
    entry
    for entry in MANIFEST
    if (entry["version"], entry["format"]) in {("1.7.6", "legacy-binary"), ("2.1.4", "ubj"), ("3.1.3", "ubj"), ("3.2.0", "json")}
    and entry["file"].rsplit("/", 1)[1].split(".")[0]
    in ("reg_squarederror", "binary_logistic", "multi_softprob", "reg_squarederror_base_score", "count_poisson",
        "reg_quantileerror_quantiles", "reg_squarederror_multi_output_tree")
]


def _target(entry: dict) -> str:
    return "matrix/" + entry["file"].replace("/", "-") + ".tar.gz"


def _model(entry: dict) -> bytes:
    return open(os.path.join(MATRIX, entry["file"]), "rb").read()


def _cell(value: float) -> str:
    return "" if np.isnan(value) else repr(float(value))


BODIES = {
    "text/csv": "\n".join(",".join(_cell(v) for v in row) for row in MATRIX_ROWS).encode(),
    "text/libsvm": "\n".join(
        " ".join(["0"] + [f"{i}:{float(v)!r}" for i, v in enumerate(row) if not np.isnan(v)]) for row in MATRIX_ROWS
    ).encode(),
    "application/json": json.dumps([[None if np.isnan(v) else float(v) for v in row] for row in MATRIX_ROWS]).encode(),
}


@pytest.fixture(scope="module")
def matrix_server(s3, tmp_path_factory):
    from support.mlserver_process import MLServerProcess
    from support.s3server import BUCKET, s3_env

    key = "matrix-e2e/"
    for entry in SERVED:
        s3.client.put_object(Bucket=BUCKET, Key=key + _target(entry), Body=tar_bytes({"xgboost-model": _model(entry)}))
    tampered = json.loads(_model(_entry("3.2.0/reg_squarederror.json")))
    tampered["learner"]["gradient_booster"]["model"]["trees"][0]["default_left"][0] = 2
    newer = json.loads(_model(_entry("3.2.0/reg_squarederror.json")))
    newer["version"] = [3, 3, 0]
    for name, model in (("tampered", tampered), ("newer", newer)):
        s3.client.put_object(Bucket=BUCKET, Key=f"{key}{name}.tar.gz",
                             Body=tar_bytes({"xgboost-model": json.dumps(model).encode()}))
    folder = tmp_path_factory.mktemp("matrix-server")
    server = MLServerProcess({**s3_env(s3, key), "MLSERVER_MME_CACHE_DIR": str(folder / "cache")}, str(folder / "log"))
    server.start()
    server.cache_dir = folder / "cache"
    yield server
    server.stop()


def _entry(file: str) -> dict:
    return next(entry for entry in MANIFEST if entry["file"] == file)


def test_the_served_matrix_spans_versions_formats_and_objectives():
    assert len(SERVED) >= 20
    assert {entry["version"] for entry in SERVED} == {"1.7.6", "2.1.4", "3.1.3", "3.2.0"}


@pytest.mark.parametrize("content_type", sorted(BODIES))
@pytest.mark.parametrize("entry", SERVED, ids=lambda entry: entry["file"])
def test_every_body_format_answers_the_training_predictions(matrix_server, entry, content_type):
    reply = invoke(matrix_server, _target(entry), BODIES[content_type], Content_Type=content_type)
    if entry["variant"] == "multi_output_tree" and entry["version"] != "3.2.0":
        model_error(reply, 500, f"saved by XGBoost {entry['version']}")
        return
    assert reply.status_code == 200, reply.text
    assert reply.json() == entry["predictions"]


@pytest.mark.parametrize("entry", [e for e in SERVED if e["variant"] != "multi_output_tree"], ids=lambda e: e["file"])
def test_v2_answers_the_training_predictions(matrix_server, entry):
    complete = [number for number, row in enumerate(MATRIX_ROWS) if not np.isnan(row).any()]  # JSON has no NaN
    rows = MATRIX_ROWS[complete]
    request = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}
    reply = httpx.post(f"{matrix_server.url}/v2/models/{v2_name(_target(entry))}/infer", json=request, timeout=60)
    assert reply.status_code == 200, reply.text
    expected = np.asarray(entry["predictions"], dtype=np.float32)[complete]
    assert reply.json()["outputs"][0]["data"] == expected.ravel().tolist()


def test_a_model_two_readers_read_differently_is_a_model_error_naming_its_version(matrix_server):
    message = model_error(invoke(matrix_server, "tampered.tar.gz"), 500, "second reading of the file (Treelite)")
    assert "saved by XGBoost 3.2.0" in message
    model_error(invoke(matrix_server, "tampered.tar.gz"), 500, "second reading")  # remembered, not served


def test_a_model_from_a_newer_xgboost_is_a_model_error_naming_both_versions(matrix_server):
    message = model_error(invoke(matrix_server, "newer.tar.gz"), 500, "saved by XGBoost 3.3.0")
    assert "newer than the XGBoost 3.2" in message


def test_what_the_check_found_is_kept_with_the_cached_artifact_for_every_later_load(matrix_server):
    served = {"3.2.0/reg_squarederror.json": True, "2.1.4/binary_logistic.ubj": False}
    for file in served:
        assert invoke(matrix_server, _target(_entry(file)), BODIES["text/csv"]).status_code == 200
    found = {}
    for meta in matrix_server.cache_dir.glob("models/*/meta.json"):
        recorded = json.loads(meta.read_text())
        found[recorded["target"]] = recorded["checked"]
    for file, gtil in served.items():
        checked = found[_target(_entry(file))]
        assert checked["gtil"] is gtil  # GTIL serves only reg:squarederror
        assert checked["saved_by"] == file.split("/")[0] and checked["compared_with"] == "Treelite"
