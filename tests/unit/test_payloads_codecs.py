import io
import json
import math
import random
import re
import struct
from decimal import Decimal, localcontext
from typing import Tuple

import numpy as np
import pytest
import scipy.sparse
from support.recordio_writer import _field, dense_records

from mlserver_mme.errors import BadPayload, UnsupportedAccept, UnsupportedContentType
from mlserver_mme.payloads import codecs as payloads
from mlserver_mme.payloads import csv_rows, json_rows, libsvm, limits, recordio, recordio_protobuf, scan
from mlserver_mme.payloads.codecs import decode, encode, negotiate


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
    monkeypatch.setattr(recordio_protobuf, "MAX_ROWS", 2)
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


# --- the vectorised readers give what the exact (cell by cell) readers give ------------------------
#
# Bodies from limits._FAST_FROM bytes are read in C (pandas, orjson, numpy), smaller ones cell by cell;
# anything the vectorised reader does not take goes to the exact one. These tests force each reader with
# the threshold and compare with the old decoders, copied below, bit for bit (NaN payloads included).




def old_csv(body: bytes) -> np.ndarray:
    lines = [line for line in body.decode("utf-8").splitlines() if line.strip()]
    rows = [[float(cell) if cell.strip() else np.nan for cell in line.split(",")] for line in lines]
    assert len({len(row) for row in rows}) == 1
    return np.asarray(rows, dtype=np.float64)


def old_json(body: bytes) -> np.ndarray:
    data = json.loads(body, parse_int=float)
    data = data["instances"] if isinstance(data, dict) else data
    rows = data if isinstance(data[0], list) else [data]
    return np.asarray([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)


def old_libsvm(body: bytes) -> scipy.sparse.csr_matrix:
    indptr, indices, values = [0], [], []
    for line in body.decode("utf-8").splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if ":" not in tokens[0]:
            tokens = tokens[1:]
        for token in tokens:
            index, value = token.split(":", 1)
            indices.append(int(index))
            values.append(float(value))
        indptr.append(len(indices))
    return scipy.sparse.csr_matrix(
        (np.asarray(values, dtype=np.float32), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
        shape=(len(indptr) - 1, max(indices) + 1),
    )


FAST, EXACT = 0, 1 << 62  # values of limits._FAST_FROM: every body read vectorised, or none


def _outcome(body: bytes, content_type: str, monkeypatch, fast_from: int):
    """What decode answers with one reader: the matrix as bytes, or the BadPayload's message."""
    monkeypatch.setattr(limits, "_FAST_FROM", fast_from)
    try:
        features = decode(body, content_type)
    except BadPayload as error:
        return type(error), error.message
    return _bits(features)


def _bits(features):
    if scipy.sparse.issparse(features):
        parts = (features.data, features.indices, features.indptr)
        return features.shape, tuple((part.dtype.str, part.tobytes()) for part in parts)
    return features.shape, features.dtype.str, features.flags.c_contiguous, features.tobytes()


def assert_same_readers(body: bytes, content_type: str, monkeypatch):
    fast = _outcome(body, content_type, monkeypatch, FAST)
    assert fast == _outcome(body, content_type, monkeypatch, EXACT), body[:200]
    return fast


def _nextafter_midpoints(values, rng) -> list:
    """Decimal strings exactly halfway between a double and the next (and a hair either side): the
    inputs where a parser that is not correctly rounded goes wrong."""
    out = []
    with localcontext() as context:
        context.prec = 800
        for value in values:
            low, high = Decimal(value), Decimal(float(np.nextafter(value, np.inf)))
            middle = (low + high) / 2
            hair = (high - low) / Decimal(10**20)
            out += [middle, middle + hair, middle - hair]
    return [format(number, "f" if rng.random() < 0.3 else "e") for number in out]


def number_corpus(seed=0, count=3000) -> list:
    """Spellings of numbers float() reads: reprs of random doubles (any bit pattern), short and long
    decimals, big integers, halfway cases, subnormals and the edges of the range."""
    rng = random.Random(seed)
    bits = np.random.default_rng(seed).integers(0, 2**64, count, dtype=np.uint64).view(np.float64)
    finite = [float(v) for v in bits if math.isfinite(v)]
    texts = [repr(v) for v in finite]
    texts += [f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 20)}{rng.choice('efg')}}" for _ in range(count)]
    texts += [str(rng.randint(-(10**30), 10**30)) for _ in range(count // 10)]
    texts += [str(rng.randint(0, 2**64)) for _ in range(count // 10)]
    texts += _nextafter_midpoints([abs(v) for v in finite[:200]] + [1.0, 0.1, 2.0**-1022, 5e-324, 1e23], rng)
    texts += ["0", "-0", "0.0", "-0.0", "1e-400", "-1e-400", "4.9e-324", "2.4703282292062328e-324",
              "2.2250738585072011e-308", "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308",
              "9007199254740993", "0.1000000000000000055511151231257827", "1.700000000000000177635684", "9" * 400,
              "1e999", "-1e999", "00012", "1.", ".5", "+1", "1E+05", "7e-2"]
    return texts


def _vectorised(texts: list) -> list:
    """The spellings the vectorised readers take with this pandas: before 3.1 (float_precision="round_trip"),
    not those beyond float64's range (they go to the exact reader, which reads them as inf)."""
    if not scan._EXACT_FLOATS:
        return texts
    return [text for text in texts if not (math.isinf(float(text)) and "inf" not in text.lower())]


def _csv_of(cells, width) -> bytes:
    rows = [cells[i : i + width] for i in range(0, len(cells) - len(cells) % width, width)]
    return "\n".join(",".join(row) for row in rows).encode() + b"\n"


@pytest.mark.parametrize("seed", [0, 1])
def test_csv_numbers_read_as_float_reads_them(monkeypatch, seed):
    cells = _vectorised(number_corpus(seed)) + ["nan", "NaN", "inf", "-inf", "Infinity", "-iNfInItY", "", " 1.5", "\t3 "]
    random.Random(seed).shuffle(cells)
    body = _csv_of(cells, 7)
    assert len(body) > 100_000
    _no_exact_reader(monkeypatch)  # the vectorised reader takes it all
    assert _outcome(body, "text/csv", monkeypatch, FAST) == _bits(old_csv(body))


@pytest.mark.parametrize(
    "body",
    [b"1,2\r\n\r\n3,4\r", b"1,2\r3,4", b"  \n1,,3\n \t \n,,\n", b"1,2,\n3,4,\n", b",\n,\n", b"1\n2\n\n\n",
     b"1, 2 ,\t3\n4 ,5,6", b"-nan,nAn,+nan\n", b"1_0,2\n", b"\xef\xbb\xbf1,2\n", b'"1",2\n', b"#1\n", b"1\x0b2\n",
     b"1\x0c,2\n", b"\xd9\xa1,2\n", b"1\xc2\xa0,2\n", b"1 2,3\n", b"+0e 9,1\n", b"+0e\t9,1\n", b"1,2\n3\n",
     b"1\n2,3\n", b"1,2\n3,4,5\n", b"0x10\n", b"1e\n", b"nan,NA\n", b"-,1\n", b"inf,infinity,-INF\n", b"1\x00\n",
     b",1\r\r,2", b",\r\r,", b"1,\r\r,2\r", b",1\n\n,2", b"\n\n,1\n,2", b",1\r\n\r\n,2\r\n",
     b"1e999,-1e999,1.7976931348623159e308," + b"9" * 400],
)
def test_csv_spellings_read_as_before(monkeypatch, body):
    assert_same_readers(body, "text/csv", monkeypatch)


def test_csv_wide_rows_are_read_cell_by_cell(monkeypatch):
    width = csv_rows._PANDAS_MAX_COLUMNS + 1
    body = (",".join(["1.5"] * width) + "\n").encode() * 2
    calls = []
    monkeypatch.setattr(csv_rows, "_read_csv", lambda *args, **kwargs: calls.append(1))
    assert _outcome(body, "text/csv", monkeypatch, FAST) == _bits(np.full((2, width), 1.5))
    assert not calls


def _json_number(text: str) -> str:
    """float()'s spelling as a JSON number (JSON has no '+1', '.5', '1.' or leading zeros)."""
    return text if re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?", text) else repr(float(text))


@pytest.mark.parametrize("seed", [0, 1])
def test_json_numbers_read_as_float_reads_them(monkeypatch, seed):
    # Not -0 (orjson reads 0: the exact reader takes it, below), nor what overflows (orjson refuses it).
    numbers = [_json_number(text) for text in number_corpus(seed) if "inf" not in text and text != "-0"]
    numbers = [n for n in numbers if "e999" not in n and len(n) < 300 and n not in ("1.7976931348623159e308",)]
    random.Random(seed).shuffle(numbers)
    rows = [numbers[i : i + 5] for i in range(0, len(numbers) - len(numbers) % 5, 5)]
    rows[3][1], rows[4][2], rows[5][0] = "null", "true", "false"
    body = ("[" + ",\n".join("[" + ", ".join(row) + "]" for row in rows) + "]").encode()
    assert len(body) > 100_000
    _no_exact_reader(monkeypatch)
    assert _outcome(body, "application/json", monkeypatch, FAST) == _bits(old_json(body))


@pytest.mark.parametrize(
    "body",
    [b"[-0]", b"[[-0, 0, -0.0, -0e0, 0e-0, 1e-0]]", b"[1, -0]", b"[18446744073709551615, 18446744073709551616]",
     b"[123456789012345678901234567890, -9223372036854775809]", b"[NaN, Infinity, -Infinity]", b"[1e400, -1e400]",
     b"[" + b"9" * 400 + b"]", b"[1.7976931348623159e308]", b"\xef\xbb\xbf[1, 2]", "[1, 2]".encode("utf-16"),
     b'{"instances": [[1, 2]]}', b'{"instances": [[1, 2]], "other": 3}', b'{"\\u0069nstances": [3]}',
     b'{"instances": [[1, 2]], "instances": [[3]]}', b'{"x": [1]}', b'[["1"]]', b"[[1], [2, 3]]", b"[[1], 2]",
     b"[1, [2]]", b"[[[1]]]", b"[[{}]]", b"[]", b"[[]]", b"[null, true, false]", b"[[1, 2], [3, 4]] ",
     b"[1 2]", b"[01]", b"[.5]", b"[+1]", b"[1.]", b'["\\ud800"]', b"[" * 2000 + b"]" * 2000,
     b"[" * 900 + b"1" + b"]" * 900,
     b"[1e-400, 5e-324, 4.9406564584124654e-324]", b"[-0.5, 1e-05, -1E-0, 2e+0]"],
)
def test_json_spellings_read_as_before(monkeypatch, body):
    assert_same_readers(body, "application/json", monkeypatch)


def test_json_negative_zero_integer_stays_negative(monkeypatch):
    monkeypatch.setattr(limits, "_FAST_FROM", FAST)
    assert np.signbit(decode(b"[[-0, 0]]", "application/json")).tolist() == [[True, False]]


@pytest.mark.parametrize("seed", [0, 1])
def test_libsvm_values_read_as_float_reads_them(monkeypatch, seed):
    rng = random.Random(seed)
    values = [v for v in _vectorised(number_corpus(seed)) if len(v) < 400] + ["nan", "NaN", "inf", "-Infinity"]
    lines = []
    while values:
        label = rng.choice(["", "0 ", "1.5 ", "-3e2 ", "nan "])
        count = min(rng.randint(0, 8), len(values))
        features = [f"{rng.choice(['', '+', '0'])}{index}:{values.pop()}" for index in rng.sample(range(50), count)]
        lines.append(label + rng.choice([" ", "\t", "  "]).join(features) + rng.choice(["", " ", "\t"]))
    body = rng.choice(["\n", "\r\n"]).join(lines).encode()
    _no_exact_reader(monkeypatch)
    assert _outcome(body, "text/libsvm", monkeypatch, FAST) == _bits(old_libsvm(body))


@pytest.mark.parametrize(
    "body",
    [b"1 0:1.5 2:3\n3:4\n", b"0\n1 1:2\n", b"\n\n0 1:2\r\n\r\n 3:4 \n", b"1 2 3\n", b"1 1:2 3\n", b"1:\n", b":1\n",
     b"+:1\n", b"-:1\n", b"1.0:2\n", b"1e3:2\n", b"nan:1\n", b"1:2:3\n", b"0x1:2\n", b"+5:1 -0:2 007:3\n", b"-1:2\n",
     b"1 0:1 99999999999999999999:2\n", b"1 0:1 00000000000000000000000000003:2\n", b"0:1 1048576:2 -5:3\n",
     b"1 0:x 99999999999:1\n", b"1_0:2\n", b"1 0:1_0\n", b"0:1\x0b1:2\n", b"0:1\x0c\n", b"0:1\x1c1:2\n",
     b"x 0:1\n", b"0:1 \xc2\xa0 1:2\n", b"0\n1\n", b"0:1e39 1:-1e39 2:1e-50\n", b"0:-0 1:-0.0\n",
     b"0:1e999 1:-1e999 2:" + b"9" * 400],
)
def test_libsvm_spellings_read_as_before(monkeypatch, body):
    assert_same_readers(body, "text/libsvm", monkeypatch)


def _float64_records(rows: np.ndarray) -> bytes:
    """Dense Float64Tensor records, as the SDK writes a float64 matrix."""
    out = b""
    for row in rows:
        record = _field(1, _field(1, b"values") + _field(2, _field(3, _field(1, row.astype("<f8").tobytes()))))
        out += _frame(record)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (3, 6), (1000, 6), (7, 300), (2, 40_000)])
def test_recordio_same_layout_records_read_at_once(monkeypatch, shape):
    rows = np.random.default_rng(0).normal(size=shape)
    rows.ravel()[::7] = np.nan
    for body in (dense_records(rows.astype(np.float32)), _float64_records(rows)):
        fast = recordio.decode_same_layout(body, max_records=10**6)
        assert _bits(fast) == _bits(recordio.decode_dense(body, max_records=10**6))
        assert_same_readers(body, "application/x-recordio-protobuf", monkeypatch)


@pytest.mark.parametrize(
    "body",
    [
        dense_records(np.ones((3, 2), np.float32)) + dense_records(np.ones((1, 3), np.float32)),
        dense_records(np.ones((2, 2), np.float32)) + _float64_records(np.ones((2, 2))),
        dense_records(np.ones((2, 2), np.float32))[:-1],
        dense_records(np.ones((2, 2), np.float32)) + b"\0",
        _record(_field(1, b"\x01\x02"), kind=7) * 3,
        _record(b"\x0d" + struct.pack("<f", 1.5)) * 2,
        _record(_field(1, b"")) * 2,
        dense_records(np.ones((2, 31), np.float32))[:-1] + b"\1",  # a padding byte not zero
    ],
)
def test_recordio_other_bodies_read_record_by_record(monkeypatch, body):
    assert_same_readers(body, "application/x-recordio-protobuf", monkeypatch)


def test_recordio_padding_must_be_zeros_to_be_read_at_once():
    body = bytearray(dense_records(np.ones((2, 31), np.float32)))  # records of 142 bytes, padded to 144
    assert recordio.decode_same_layout(bytes(body), 10) is not None
    body[-1] = 1  # a padding byte: the record-by-record reader ignores it, the same-layout one does not take it
    assert recordio.decode_same_layout(bytes(body), 10) is None
    assert recordio.decode_dense(bytes(body), 10).tolist() == [[1.0] * 31] * 2


def test_recordio_too_many_same_layout_records():
    with pytest.raises(ValueError, match="more than 2 records"):
        recordio.decode_same_layout(dense_records(np.zeros((3, 1), np.float32)), max_records=2)


# --- large bodies: read vectorised (limits._FAST_FROM as shipped), within bounds, as float() reads them ----


def _home_rows(count: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.column_stack([
        rng.normal(1995, 10, count), rng.normal(3000, 750, count), rng.integers(2, 7, count),
        rng.integers(2, 7, count) / 2, rng.normal(1, 0.25, count), rng.integers(0, 4, count),
    ])


def _no_exact_reader(monkeypatch):
    def refuse(body):
        raise AssertionError("read cell by cell")
    for module, name in ((csv_rows, "_csv_exact"), (json_rows, "_json_exact"), (libsvm, "_libsvm_exact"),
                         (recordio_protobuf, "_recordio_exact")):
        monkeypatch.setattr(module, name, refuse)


def _about_5mb(write, rows: np.ndarray) -> Tuple[bytes, np.ndarray]:
    """A body of ~5.5 MB of the first rows of ``rows``, and those rows."""
    count = int(len(rows) * 5_500_000 / len(write(rows)))
    return write(rows[:count]), rows[:count]


def _csv_body(rows):
    return "".join(",".join(map(repr, row)) + "\n" for row in rows.tolist()).encode()


def _libsvm_body(rows):
    return "".join("0 " + " ".join(f"{i}:{v!r}" for i, v in enumerate(row)) + "\n" for row in rows.tolist()).encode()


def _json_body(rows):
    return json.dumps(rows.tolist()).encode()


@pytest.mark.parametrize(
    "write, content_type",
    [(_csv_body, "text/csv"), (_json_body, "application/json"), (_libsvm_body, "text/libsvm"),
     (lambda rows: dense_records(rows.astype(np.float32)), "application/x-recordio-protobuf")],
)
def test_five_megabyte_bodies_are_read_vectorised_exactly(monkeypatch, write, content_type):
    _no_exact_reader(monkeypatch)
    body, rows = _about_5mb(write, _home_rows(200_000).round(2))  # reprs round-trip: float() reads the rows back
    assert 5_000_000 < len(body) < 6_000_000
    features = decode(body, content_type)
    if content_type == "text/libsvm":
        assert features.shape == rows.shape  # every feature written, in order (toarray() would make -0.0 0.0)
        assert features.data.tobytes() == rows.astype(np.float32).tobytes()
        assert features.indices.tolist() == list(range(6)) * len(rows)
    elif content_type == "application/x-recordio-protobuf":
        assert _bits(features) == _bits(rows.astype(np.float32))
    else:
        assert _bits(features) == _bits(rows)


def test_large_bodies_keep_the_bounds(monkeypatch):
    _no_exact_reader(monkeypatch)
    with pytest.raises(BadPayload, match="more than 1000000 rows"):
        decode(b"0\n" * (payloads.MAX_ROWS + 1), "text/csv")
    with pytest.raises(BadPayload, match="same number of values"):
        decode(b"1,2\n" * 100_000 + b"3\n", "text/csv")
    with pytest.raises(BadPayload, match="more than 1000000 rows"):
        decode(b"[" + b"[0]," * payloads.MAX_ROWS + b"[0]]", "application/json")
    with pytest.raises(BadPayload, match="feature index must be in 0..1048575, not -7"):
        decode(b"1 0:1 1:2\n" * 100_000 + b"1 -7:1 1048576:2\n", "text/libsvm")
    with pytest.raises(BadPayload, match="more than 1000000 rows"):
        decode(b"1\n" * payloads.MAX_ROWS + b"0:1\n", "text/libsvm")
    with pytest.raises(BadPayload, match="no features"):
        decode(b"0\n" * 500_000, "text/libsvm")
    rows = payloads.MAX_CELLS // payloads.MAX_COLUMNS + 1
    with pytest.raises(BadPayload, match="values"):
        decode(b"0:1\n" * (rows - 1) + f"{payloads.MAX_COLUMNS - 1}:1\n".encode() + b"0:1\n" * 3000, "text/libsvm")
    one = dense_records(np.zeros((1, 1), np.float32))
    monkeypatch.setattr(recordio_protobuf, "MAX_ROWS", 1000)
    with pytest.raises(BadPayload, match="more than 1000 records"):
        decode(one * 1001, "application/x-recordio-protobuf")


# --- responses: orjson's text, parsed, is exactly the old one's ----------------------------------------


def old_encode(predictions: np.ndarray, kind: str) -> bytes:
    values = predictions.tolist()
    if kind == "text/csv":
        if predictions.ndim <= 1:
            return ",".join(map(repr, values)).encode()
        return "\n".join(",".join(map(repr, row)) for row in values).encode()
    return json.dumps(values).encode()


def _csv_values(body: bytes) -> list:
    return [[float(cell) for cell in line.split(",")] if line else [] for line in body.decode().split("\n")]


def _random_float32(count: int, seed: int = 0) -> np.ndarray:
    bits = np.random.default_rng(seed).integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    return values[np.isfinite(values)]


@pytest.mark.parametrize("kind", ["application/json", "text/csv"])
def test_encoded_float32_parse_to_the_exact_values(kind):
    edges = [0, -0.0, 1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 1e-7, 0.1, 448131.25, 16777217]
    predictions = np.concatenate([_random_float32(200_000), np.array(edges, dtype=np.float32)])
    body, content_type = encode(predictions, kind)
    assert content_type == kind
    parsed = json.loads(body) if kind == "application/json" else _csv_values(body)[0]
    assert np.array(parsed).tobytes() == predictions.astype(np.float64).tobytes()  # -0.0 included
    assert np.array(parsed, dtype=np.float32).tobytes() == predictions.tobytes()


@pytest.mark.parametrize("kind", ["application/json", "text/csv"])
@pytest.mark.parametrize(
    "predictions",
    [np.array([1.5, np.nan, 2.0, np.inf, -np.inf, np.nan], dtype=np.float32),
     np.array([[np.nan, 1.0], [-np.inf, np.inf]], dtype=np.float32), np.array([np.nan]), np.array([-np.nan, np.inf])],
)
def test_non_finite_predictions_are_written_as_before(kind, predictions):
    body, _ = encode(predictions, kind)
    assert body == old_encode(predictions, kind).replace(b", ", b",")


def test_non_finite_spellings():
    predictions = np.array([np.nan, np.inf, -np.inf, 0.5], dtype=np.float32)
    assert encode(predictions, "application/json")[0] == b"[NaN,Infinity,-Infinity,0.5]"
    assert encode(predictions, "text/csv")[0] == b"nan,inf,-inf,0.5"
    assert encode(predictions.reshape(2, 2), "text/csv")[0] == b"nan,inf\n-inf,0.5"


@pytest.mark.parametrize(
    "predictions",
    [np.arange(5, dtype=np.int64), np.arange(6, dtype=np.uint8).reshape(2, 3), np.array([2**64 - 1], dtype=np.uint64),
     np.array([0.1, 1e-5, 1e16, 1e22, 5e-324], dtype=np.float64), np.array([1.5, 0.1], dtype=np.float16),
     np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2], np.arange(6, dtype=np.float32).reshape(2, 3).T,
     np.arange(6).reshape(2, 3).T, np.arange(4, dtype=">f4"), np.arange(4, dtype=">i4"), np.zeros(0, np.float32),
     np.zeros((0, 3), np.float32), np.zeros((2, 0), np.float32), np.array([[7.25]], dtype=np.float32),
     np.array([True, False]), np.array(2.5, dtype=np.float32), np.zeros((2, 2, 2), np.float32),
     np.array(["a", "b"]), np.array([1, "x"], dtype=object)],
)
@pytest.mark.parametrize("kind", ["application/json", "text/csv"])
def test_encoded_values_are_the_old_ones(predictions, kind):
    if predictions.ndim == 0 and kind == "text/csv":  # as before: not a list of values (no runtime answers that)
        with pytest.raises(TypeError):
            old_encode(predictions, kind)
        with pytest.raises(TypeError):
            encode(predictions, kind)
        return
    body, _ = encode(predictions, kind)
    old = old_encode(predictions, kind)
    if kind == "application/json":
        assert json.loads(body) == json.loads(old)
    elif predictions.dtype.kind in "fiu" and predictions.ndim in (1, 2):
        assert _csv_values(body) == _csv_values(old)
    else:
        assert body == old  # other shapes and dtypes are written as before


@pytest.mark.parametrize("dtype", [">f8", ">f4", ">i4", "<f4"])
def test_npy_in_any_byte_order_is_read_in_native_order(dtype):
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1.5, 2.0, 3.0]] if dtype[1] == "f" else [[1, 2, 3]], dtype=dtype))
    decoded = decode(buffer.getvalue(), "application/x-npy")
    assert decoded.dtype.isnative
    assert decoded.tolist() == ([[1.5, 2.0, 3.0]] if dtype[1] == "f" else [[1, 2, 3]])


@pytest.mark.parametrize("fast_from", [FAST, EXACT])
@pytest.mark.parametrize(
    "body, row, feature",
    [
        (b"1 3:1.7500001192092896 2:3.5 2:5.5 1:2068.5 5:0.5 1:3661.499755859375", 1, 1),
        (b"1:1 2:2\n0\n2:1 3:1 2:3\n", 3, 2),
        (b"0 4:1 4:1\n", 1, 4),
    ],
)
def test_a_libsvm_row_naming_a_feature_twice_is_refused_by_both_readers(monkeypatch, fast_from, body, row, feature):
    monkeypatch.setattr(limits, "_FAST_FROM", fast_from)
    with pytest.raises(BadPayload, match=f"libsvm row {row} names feature {feature} more than once"):
        decode(body, "text/libsvm")


@pytest.mark.parametrize("body", [b"2:1 1:2\n1:1 2:2\n", b"1:1\n0\n\n3:1 1:1\n0\n"])
def test_libsvm_rows_in_any_order_or_empty_are_still_read(body):
    assert decode(body, "text/libsvm").shape[0] == body.count(b"\n") - body.count(b"\n\n")
