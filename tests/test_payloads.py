import io
import json

import numpy as np
import pytest
from recordio_writer import dense_records

from mlserver_mme.errors import BadPayload, UnsupportedAccept, UnsupportedContentType
from mlserver_mme.payloads import decode, encode, negotiate


def test_csv_rows_and_missing_cells():
    features = decode(b"1,2.5,3\r\n4,,6\n\n", "text/csv; charset=utf-8")
    assert features.shape == (2, 3)
    assert features[0].tolist() == [1.0, 2.5, 3.0]
    assert np.isnan(features[1, 1])


def test_json_rows_and_single_row():
    assert decode(b"[[1, 2], [3, 4]]", "application/json").tolist() == [[1, 2], [3, 4]]
    assert decode(b"[1, 2]", "application/json").tolist() == [[1, 2]]
    assert decode(b'{"instances": [[1, 2]]}', "application/json").tolist() == [[1, 2]]


def test_npy():
    buffer = io.BytesIO()
    np.save(buffer, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert decode(buffer.getvalue(), "application/x-npy").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_npy_refuses_pickled_objects():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadPayload):
        decode(buffer.getvalue(), "application/x-npy")


def test_libsvm_with_and_without_label_and_as_default():
    features = decode(b"1 0:1.5 2:3\n3:4\n", None)
    assert features.shape == (2, 4)
    assert features.toarray().tolist() == [[1.5, 0, 3, 0], [0, 0, 0, 4]]


def test_recordio_protobuf_dense_rows():
    rows = np.array([[1.5, 2, 3], [4, 5, 6.25]], dtype=np.float32)
    assert decode(dense_records(rows), "application/x-recordio-protobuf").tolist() == rows.tolist()


@pytest.mark.parametrize("body", [b"\xce\xd7\x23\x0a" + b"\xff" * 4, b"\x0a\x23\xd7\xce\x20\x00\x00\x00short"])
def test_recordio_garbage_is_a_bad_payload(body):
    with pytest.raises(BadPayload):
        decode(body, "application/x-recordio-protobuf")


def test_unsupported_content_type():
    with pytest.raises(UnsupportedContentType):
        decode(b"x", "image/png")


@pytest.mark.parametrize(
    "accept, kind",
    [(None, "application/json"), ("*/*", "application/json"), ("text/csv", "text/csv"),
     ("image/png, text/csv;q=0.5", "text/csv"), ("application/json; charset=utf-8", "application/json")],
)
def test_negotiate(accept, kind):
    assert negotiate(accept) == kind


def test_negotiate_refuses_what_it_cannot_write():
    with pytest.raises(UnsupportedAccept):
        negotiate("image/png")


def test_float32_predictions_round_trip_exactly():
    predictions = np.array([448131.25, 0.1, 1e-7, 123456.789], dtype=np.float32)
    body, kind = encode(predictions, "application/json")
    assert kind == "application/json"
    assert np.array(json.loads(body), dtype=np.float32).tobytes() == predictions.tobytes()
    assert json.loads(body) == [float(v) for v in predictions]
    body, kind = encode(predictions, "text/csv")
    assert [float(v) for v in body.decode().split(",")] == [float(v) for v in predictions]


def test_csv_matrix_is_one_line_per_row():
    body, _ = encode(np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32), "text/csv")
    assert body == b"0.25,0.75\n0.5,0.5"
