"""Property tests on hostile input: request bodies and target-model names.

Every body is decoded twice, by the vectorised readers (pandas, orjson, numpy) and by
the exact cell-by-cell ones: both must answer the same matrix, bit for bit, or the
same error. Derandomized (the same examples on every run, so CI is reproducible) and
bounded in examples so that the file runs in a few seconds.
"""

import io
import json
import re
import struct

import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.recordio_writer import _field, _varint, dense_records

from mlserver_mme.errors import BadPayload
from mlserver_mme.naming import NotATargetPath, target_of, v2_name, validate_target
from mlserver_mme.payloads import codecs as payloads
from mlserver_mme.payloads import limits

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CONTENT_TYPES = [
    None, "", "text/csv", "csv", "text/csv; charset=utf-8", "text/libsvm", "text/x-libsvm", "application/json",
    "application/x-npy", "application/x-recordio-protobuf", "image/png",
]


EXACT_ONLY = 1 << 62  # limits._FAST_FROM for which no body is read by the vectorised readers


def _decode(body: bytes, content_type, fast_from: int):
    """decode's matrix or BadPayload with limits._FAST_FROM set (0: every body read vectorised first)."""
    saved = limits._FAST_FROM
    limits._FAST_FROM = fast_from
    try:
        return payloads.decode(body, content_type)
    except BadPayload as error:
        return error
    finally:
        limits._FAST_FROM = saved


def _outcome(result):
    if isinstance(result, BadPayload):
        return type(result), result.message
    if scipy.sparse.issparse(result):
        return result.shape, [(part.dtype.str, part.tobytes()) for part in (result.data, result.indices, result.indptr)]
    return result.shape, result.dtype.str, result.tobytes()


def assert_decodes_within_bounds(body: bytes, content_type):
    """``decode`` answers a bounded 2-D numeric matrix or raises BadPayload: never anything else; and the
    vectorised readers answer what the exact (cell by cell) ones do, bit for bit or message for message."""
    features = _decode(body, content_type, 0)
    if payloads.media_type(content_type) != payloads.NPY:  # one reader (and messages naming object addresses)
        assert _outcome(features) == _outcome(_decode(body, content_type, EXACT_ONLY)), body[:300]
    if isinstance(features, BadPayload):
        assert len(features.message) < 300, features.message
        event("refused")
        return
    event("decoded")
    assert isinstance(features, np.ndarray) or scipy.sparse.isspmatrix_csr(features)
    assert features.ndim == 2 and features.dtype.kind in "fiub"
    rows, columns = features.shape
    assert 1 <= rows <= payloads.MAX_ROWS and 1 <= columns <= payloads.MAX_COLUMNS
    assert rows * columns <= payloads.MAX_CELLS


@st.composite
def mutated(draw, bodies):
    """A body from ``bodies`` with a few bytes replaced, inserted or cut: near-valid input reaches deeper."""
    body = bytearray(draw(bodies))
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(body)))
        cut = draw(st.integers(0, 4))
        body[position : position + cut] = draw(st.binary(max_size=4))
    return bytes(body)


# --- request bodies --------------------------------------------------------------------------------

numbers_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["", " ", "nan", "-inf", "1e999", "9" * 400, "0x10", "1_0", "abc", "١", "\x00", "--1"]),
)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(CONTENT_TYPES))
def test_arbitrary_bytes(body, content_type):
    assert_decodes_within_bounds(body, content_type)


def rectangular(cells, max_width=5):
    return st.integers(1, max_width).flatmap(
        lambda width: st.lists(st.lists(cells, min_size=width, max_size=width), min_size=1, max_size=5)
    )


def matrices(cells):
    """Rows of one width (mostly valid bodies), or of any widths."""
    return st.one_of(rectangular(cells), st.lists(st.lists(cells, max_size=6), max_size=6))


csv_bodies = matrices(numbers_text).map(lambda rows: "\n".join(",".join(row) for row in rows).encode())


# Bodies of the bytes the vectorised readers take, where pandas or orjson could read a spelling differently.
SPELLINGS = ["1", "-0", "0.5", ".5", "5.", "+1", "1e5", "1E-05", "1e", "e1", "-", "+", ".", "nan", "NaN", "-nan", "inf",
             "-inf", "Infinity", "iNF", "infinit", "1e999", "00012", "9" * 30, "+0e", "1.5e+3", "0.1000000000000000055"]
csv_text = st.lists(
    st.one_of(st.sampled_from(SPELLINGS), st.sampled_from(list(",, ,\t\r\n\n"))), max_size=30
).map(lambda parts: "".join(parts).encode())
csv_alphabet = st.text(alphabet="0123456789+-.eEnaifty, \t\r\n", max_size=40).map(str.encode)


@FUZZ
@given(st.one_of(csv_bodies, mutated(csv_bodies), csv_text, csv_alphabet))
def test_csv(body):
    assert_decodes_within_bounds(body, "text/csv")


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(10**400), 10**400) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["instances", "x"]), children),
    max_leaves=20,
)
json_numbers = st.one_of(st.floats(), st.integers(-(10**400), 10**400), st.none(), st.booleans())
json_bodies = st.one_of(
    json_values.map(lambda value: json.dumps(value).encode()),
    matrices(json_numbers).map(lambda rows: json.dumps(rows).encode()),
    st.lists(json_numbers, min_size=1).map(lambda row: json.dumps({"instances": [row]}).encode()),
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"1" + b"]" * depth),
)


JSON_SPELLINGS = ["-0", "0", "-0.0", "-0e0", "1e-0", "1E+2", "0.1", "18446744073709551615", "18446744073709551616",
                  "-9223372036854775809", "9" * 40, "1e400", "NaN", "-Infinity", "null", "true", "01", ".5", "+1", "1."]
json_text = st.lists(st.lists(st.sampled_from(JSON_SPELLINGS), min_size=1, max_size=4), min_size=1, max_size=4).map(
    lambda rows: ("[" + ", ".join("[" + ",".join(row) + "]" for row in rows) + "]").encode()
)


@FUZZ
@given(st.one_of(json_bodies, mutated(json_bodies), json_text, mutated(json_text)))
def test_json(body):
    assert_decodes_within_bounds(body, "application/json")


libsvm_indices = st.one_of(
    st.integers(0, 20), st.integers(-5, 2**70), st.just(payloads.MAX_COLUMNS - 1), st.just(payloads.MAX_COLUMNS)
)
libsvm_tokens = st.one_of(
    st.tuples(libsvm_indices.map(str), numbers_text).map(":".join),
    st.sampled_from([":", "1:", ":1", "1:2:3", "x:1", "1"]),
)
libsvm_lines = st.tuples(st.sampled_from(["", "0", "1.5", "x"]), st.lists(libsvm_tokens, max_size=5)).map(
    lambda line: " ".join([line[0], *line[1]])
)
libsvm_rows = st.lists(
    st.lists(st.tuples(st.integers(0, 30), st.floats(width=32)).map(lambda t: f"{t[0]}:{t[1]!r}"), max_size=5),
    min_size=1,
    max_size=5,
).map(lambda rows: "\n".join("1 " + " ".join(row) for row in rows))
libsvm_bodies = st.one_of(st.lists(libsvm_lines, max_size=6).map("\n".join), libsvm_rows).map(str.encode)


libsvm_text = st.lists(
    st.one_of(
        st.sampled_from(SPELLINGS + ["1:", ":1", "3:", "-1:", "+2:", "1048576:"]), st.sampled_from(list("  \t:\n\r\n"))
    ),
    max_size=30,
).map(lambda parts: "".join(parts).encode())
libsvm_alphabet = st.text(alphabet="0123456789+-.enaif: \t\r\n", max_size=40).map(str.encode)


@FUZZ
@given(
    st.one_of(libsvm_bodies, mutated(libsvm_bodies), libsvm_text, libsvm_alphabet),
    st.sampled_from([None, "text/libsvm"]),
)
def test_libsvm(body, content_type):
    assert_decodes_within_bounds(body, content_type)


npy_descrs = st.sampled_from(
    ["<f8", ">f4", "<f2", "|b1", "|i1", "<u8", "<c16", "|O", "<U3", "|S2", "|V8", "<M8[s]", "<f8x"]
)
npy_shapes = st.one_of(
    st.lists(st.integers(1, 8), min_size=1, max_size=2),
    st.lists(st.one_of(st.integers(-2, 8), st.integers(0, 10**20), st.just(2**20 + 1)), max_size=4),
).map(tuple)


@st.composite
def npy_bodies(draw):
    """An npy header of a random shape and dtype, then a random number of data bytes."""
    header = {"descr": draw(npy_descrs), "fortran_order": draw(st.booleans()), "shape": draw(npy_shapes)}
    text = repr(header).encode("latin-1")
    write = draw(st.sampled_from([(1, "<H"), (2, "<I"), (3, "<I")]))
    padding = -(len(text) + 1 + 6 + 2 + struct.calcsize(write[1])) % 64
    text += b" " * padding + b"\n"
    prefix = b"\x93NUMPY" + bytes([write[0], 0]) + struct.pack(write[1], len(text))
    return prefix + text + draw(st.one_of(st.binary(max_size=200), st.just(b"\1" * _size(header))))


def _size(header) -> int:
    """Bytes of the array the header declares (at most 4 KiB), so some bodies are complete."""
    try:
        size = int(np.prod(header["shape"], dtype=object)) * np.dtype(header["descr"]).itemsize
    except (TypeError, ValueError):
        return 0
    return min(max(size, 0), 4096)


def _saved(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


saved_arrays = st.sampled_from(
    [np.arange(6).astype(dtype).reshape(2, 3) for dtype in (np.float32, np.int16, np.uint8, np.bool_)] + [np.zeros(3)]
).map(_saved)


@FUZZ
@given(st.one_of(npy_bodies(), saved_arrays, mutated(saved_arrays)))
def test_npy(body):
    assert_decodes_within_bounds(body, "application/x-npy")


def _frame(record: bytes, length=None) -> bytes:
    length = len(record) if length is None else length
    return struct.pack("<II", 0xCED7230A, length) + record + b"\0" * (-len(record) % 4)


protobuf_messages = st.recursive(
    st.binary(max_size=24),
    lambda children: st.lists(
        st.one_of(
            st.tuples(st.integers(0, 8), children).map(lambda field: _field(*field)),
            st.tuples(st.integers(0, 8), st.integers(0, 2**72)).map(lambda f: _varint(f[0] << 3) + _varint(f[1])),
            st.tuples(st.integers(0, 8), st.sampled_from([1, 3, 4, 5, 6, 7])).map(lambda f: _varint(f[0] << 3 | f[1])),
        ),
        max_size=4,
    ).map(b"".join),
    max_leaves=12,
)
records = st.one_of(
    protobuf_messages,
    st.tuples(st.sampled_from([2, 3, 7]), protobuf_messages).map(
        lambda t: _field(1, _field(1, b"values") + _field(2, _field(t[0], t[1])))
    ),
)
def _float64_records(rows) -> bytes:
    """Dense Float64Tensor records, as the SDK writes a float64 matrix."""
    tensors = [_field(3, _field(1, np.array(row, "<f8").tobytes())) for row in rows]
    return b"".join(_frame(_field(1, _field(1, b"values") + _field(2, tensor))) for tensor in tensors)


recordio_bodies = st.one_of(
    st.lists(st.tuples(records, st.none() | st.integers(0, 2**32 - 1)), max_size=4).map(
        lambda frames: b"".join(_frame(*frame) for frame in frames)
    ),
    rectangular(st.floats(width=32)).map(lambda rows: dense_records(np.array(rows, dtype=np.float32))),
    rectangular(st.floats(), max_width=40).map(_float64_records),
    st.lists(rectangular(st.floats(width=32), max_width=3), min_size=2, max_size=3).map(
        lambda parts: b"".join(dense_records(np.array(rows, dtype=np.float32)) for rows in parts)
    ),
)


@FUZZ
@given(st.one_of(recordio_bodies, mutated(recordio_bodies)))
def test_recordio(body):
    assert_decodes_within_bounds(body, "application/x-recordio-protobuf")


# --- target-model names --------------------------------------------------------------------------

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
path_text = st.lists(
    st.sampled_from(
        ["a", "B_9", "..", ".", "", "/", "/", "~", "~2F", "ü", "😀", " ", "\\", "\x00", "\n", ".tar.gz", "%2F", "-"]
    ),
    max_size=8,
).map("".join)
targets = st.one_of(path_text, any_text, st.just("x" * 1024), st.just("x" * 1025))
NAME = re.compile(r"[A-Za-z0-9._~\-]+")


def _valid(target: str) -> bool:
    try:
        validate_target(target)
    except NotATargetPath:
        return False
    return True


@FUZZ
@given(targets)
def test_validate_target_returns_it_or_refuses(target):
    try:
        assert validate_target(target) is target
    except NotATargetPath:
        return


@FUZZ
@given(targets.filter(_valid))
def test_valid_targets_round_trip_through_safe_names(target):
    name = v2_name(target)
    assert NAME.fullmatch(name), name
    assert target_of(name) == target


names = st.one_of(
    st.text(alphabet="ab.-_~0123456789ABCDEFcf/", max_size=24),
    path_text.map(lambda text: text.replace("/", "~2F")),
    any_text,
)


@FUZZ
@given(names)
def test_only_names_from_v2_name_map_to_a_target(name):
    try:
        target = target_of(name)
    except NotATargetPath:
        return
    assert validate_target(target) == target
    assert v2_name(target) == name


@pytest.mark.parametrize("name", ["", "~", "~~", "a~2f", "~C3~28~", "~ED~A0~80~"])
def test_names_no_target_maps_to(name):
    with pytest.raises(NotATargetPath):
        target_of(name)
