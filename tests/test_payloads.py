import io
import json
import struct

import numpy as np
import pytest
from recordio_writer import _field, dense_records

from mlserver_mme import payloads, recordio
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


# Hostile bodies: each is a BadPayload (a 4xx), never another exception (a 500), in bounded time and memory.


def _npy_header(shape, descr="<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("index", ["99999999999999999999", "-1", str(payloads.MAX_COLUMNS)])
def test_libsvm_index_out_of_bounds(index):
    with pytest.raises(BadPayload, match="feature index"):
        decode(f"1 0:1 {index}:2\n".encode(), "text/libsvm")


def test_libsvm_largest_index():
    features = decode(f"{payloads.MAX_COLUMNS - 1}:2\n".encode(), "text/libsvm")
    assert features.shape == (1, payloads.MAX_COLUMNS)


def test_libsvm_labels_only_is_refused_not_a_prediction_per_line():
    with pytest.raises(BadPayload):  # 2.1 MB: was 1,050,000 predictions (17.8 MB); both rules refuse it
        decode(b"0\n" * 1_050_000, "text/libsvm")
    with pytest.raises(BadPayload, match="no features"):
        decode(b"0\n1\n", "text/libsvm")


def test_libsvm_label_only_row_among_others_is_a_row():
    assert decode(b"0\n1 1:2\n", "text/libsvm").toarray().tolist() == [[0, 0], [0, 2]]


def test_libsvm_rows_are_bounded():
    with pytest.raises(BadPayload, match="more than 1000000 rows"):
        decode(b"0\n" * payloads.MAX_ROWS + b"1 0:1\n", "text/libsvm")


def test_libsvm_implied_dense_matrix_is_bounded():
    rows = payloads.MAX_CELLS // payloads.MAX_COLUMNS + 1
    body = b"0:1\n" * (rows - 1) + f"{payloads.MAX_COLUMNS - 1}:1\n".encode()
    with pytest.raises(BadPayload, match="values"):
        decode(body, "text/libsvm")


def test_json_numbers_beyond_float64_are_infinite_as_in_csv():
    digits = b"9" * 400
    assert decode(b"[" + digits + b"]", "application/json").tolist() == [[np.inf]]
    assert decode(digits, "text/csv").tolist() == [[np.inf]]
    assert decode(b"[1e999, -1e999]", "application/json").tolist() == [[np.inf, -np.inf]]
    assert decode(b"1e999,-inf,nan", "text/csv")[0, :2].tolist() == [np.inf, -np.inf]


def test_json_integers_read_as_float_reads_them():
    assert decode(b"[12345678901234567891, 3]", "application/json").tolist() == [[12345678901234567891.0, 3.0]]


def test_json_nested_too_deeply():
    with pytest.raises(BadPayload, match="nested too deeply"):
        decode(b"[" * 100_000 + b"]" * 100_000, "application/json")


@pytest.mark.parametrize(
    "body", [b"[[[1]]]", b'[["1"]]', b'["1.5", 2]', b"[[{}]]", b"[1, [2]]", b"[[1], 2]", b'{"instances": [[1, "x"]]}']
)
def test_json_rows_hold_numbers_only(body):
    with pytest.raises(BadPayload, match="JSON"):
        decode(body, "application/json")


def test_json_null_and_booleans_as_before():
    assert np.isnan(decode(b"[null, true, false]", "application/json")).tolist() == [[True, False, False]]
    assert decode(b"[[true, false]]", "application/json").tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("body", [b"[[]]", b"[[], []]"])
def test_rows_without_features_are_refused(body):
    with pytest.raises(BadPayload, match="no features"):
        decode(body, "application/json")


def test_csv_rows_and_columns_are_bounded():
    with pytest.raises(BadPayload, match="rows"):
        decode(b"0\n" * (payloads.MAX_ROWS + 1), "text/csv")
    with pytest.raises(BadPayload, match="features"):
        decode(b"0," * payloads.MAX_COLUMNS + b"0", "text/csv")


@pytest.mark.parametrize(
    "shape", [(10**16,), (10**8, 10**8), (1, 10**16), (10**16, 1), (10**16, 0), (0, 10**16), (-1, 3), (3, -1)]
)
def test_npy_declared_shape_is_checked_before_loading(shape):
    with pytest.raises(BadPayload):
        decode(_npy_header(shape) + b"\0" * 64, "application/x-npy")


def test_npy_shorter_than_declared():
    with pytest.raises(BadPayload, match="shorter"):
        decode(_npy_header((1000, 6)) + b"\0" * 8 * 10, "application/x-npy")


@pytest.mark.parametrize(
    "array",
    [np.zeros((2, 2, 2)), np.zeros((2, 2), dtype=complex), np.zeros(2, dtype="M8[s]"),
     np.zeros(2, dtype=[("a", "<f4")]),
     np.array(["a", "b"]), np.float64(3), np.zeros((0, 3)), np.zeros((3, 0))],
)
def test_npy_refuses_what_is_not_a_numeric_matrix(array):
    with pytest.raises(BadPayload):
        decode(_npy(array), "application/x-npy")


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint16, np.int64, np.float16, np.float32, np.float64])
def test_npy_numeric_dtypes_load_as_before(dtype):
    array = np.arange(6).reshape(2, 3).astype(dtype)
    features = decode(_npy(array), "application/x-npy")
    assert features.dtype == array.dtype and features.tolist() == array.tolist()
    assert decode(_npy(array[0]), "application/x-npy").tolist() == [array[0].tolist()]


def _frame(record: bytes) -> bytes:
    return struct.pack("<II", 0xCED7230A, len(record)) + record + b"\0" * (-len(record) % 4)


def _record(tensor: bytes, kind: int = 2) -> bytes:
    """A record whose ``values`` feature is ``tensor`` (a Float32Tensor, or Int32Tensor for kind 7)."""
    return _frame(_field(1, _field(1, b"values") + _field(2, _field(kind, tensor))))


@pytest.mark.parametrize(
    "body",
    [
        struct.pack("<II", 0xCED7230A, (1 << 29) - 1) + b"\0" * 64,  # a frame longer than the body
        _frame(b"\x0a" + b"\xff" * 9 + b"\x01"),  # a length varint of 64 bits
        _frame(b"\x0a" + b"\xff" * 20),  # a varint longer than 10 bytes
        _record(_field(1, b"\xff" * 9 + b"\x7f"), kind=7),  # a 10-byte varint over 64 bits
        _record(b"\x08" + b"\xff" * 9 + b"\x7f", kind=7),  # the same, one value per field
        _frame(b"\x08\x01"),  # features not a map
        _frame(_field(1, b"\x08\x01")),  # map key not a string
        _record(b"\x0b\x0c"),  # group wire types
        _record(_field(1, b"\0\0\x80")),  # packed float32 of 3 bytes
        _record(_field(1, b"")) + _record(_field(1, b"\0\0\x80\x3f")),  # records of different lengths
    ],
)
def test_recordio_hostile_frames(body):
    with pytest.raises(BadPayload):
        decode(body, "application/x-recordio-protobuf")


def test_recordio_too_many_records(monkeypatch):
    one = dense_records(np.zeros((1, 1), dtype=np.float32))
    assert decode(one * 3, "application/x-recordio-protobuf").shape == (3, 1)
    with pytest.raises(ValueError, match="more than 2 records"):
        recordio.decode_dense(one * 3, max_records=2)
    monkeypatch.setattr(payloads, "MAX_ROWS", 2)
    with pytest.raises(BadPayload, match="more than 2 records"):
        decode(one * 3, "application/x-recordio-protobuf")


def test_recordio_values_one_field_each_as_packed():
    unpacked = b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.5, -2.0, 3.25))
    assert decode(_record(unpacked), "application/x-recordio-protobuf").tolist() == [[1.5, -2.0, 3.25]]
    negative = b"\x08" + b"\xff" * 9 + b"\x01"  # int32 -1, sign-extended to 10 bytes
    assert decode(_record(negative + b"\x08\x05", kind=7), "application/x-recordio-protobuf").tolist() == [[-1, 5]]
    assert decode(_record(_field(1, negative[1:] + b"\x05"), kind=7), "application/x-recordio-protobuf").tolist() == [
        [-1, 5]
    ]


@pytest.mark.parametrize("error", [OverflowError("x"), RecursionError(), MemoryError(), IndexError(), KeyError("k"),
                                   AttributeError("a"), np.linalg.LinAlgError("n"), ArithmeticError()])
def test_any_failure_while_decoding_is_a_bad_payload(monkeypatch, error):
    def broken(body):
        raise error

    monkeypatch.setitem(payloads._DECODERS, "text/csv", broken)
    with pytest.raises(BadPayload, match=f"not valid text/csv: {type(error).__name__}"):
        decode(b"1,2", "text/csv")


@pytest.mark.parametrize(
    "body, content_type",
    [(b"a" * 5000, "text/csv"), (b"1 " + b"x" * 5000 + b":1", "text/libsvm"), (b"1 0:" + b"y" * 5000, "text/libsvm"),
     (b"-" + b"9" * 5000 + b":1", "text/libsvm"), (b"[" + b"z" * 5000 + b"]", "application/json")],
)
def test_error_messages_do_not_echo_the_body(body, content_type):
    with pytest.raises(BadPayload) as caught:
        decode(body, content_type)
    assert len(caught.value.message) < 250


@pytest.mark.parametrize(
    "header", [b"{'a': (\n", b"{'descr': '<f8', 'fortran_order': False, 'shape': (1,)\n", b"{\x00}\n"]
)
def test_npy_unparsable_header(header):
    # numpy's header parser raises tokenize.TokenError (found by fuzzing) besides ValueError.
    with pytest.raises(BadPayload, match="not valid application/x-npy"):
        decode(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header, "application/x-npy")


def test_npy_other_format_versions():
    with pytest.raises(BadPayload, match="not valid application/x-npy: ValueError: npy format version 32.103"):
        decode(b"\x93NUMPY garbage", "application/x-npy")
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ones((2, 3)), version=(3, 0))
    assert decode(buffer.getvalue(), "application/x-npy").tolist() == [[1.0] * 3] * 2
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros(2, dtype=[("\u20ac", "<f4")]), version=(3, 0))
    with pytest.raises(BadPayload, match="numeric"):
        decode(buffer.getvalue(), "application/x-npy")
