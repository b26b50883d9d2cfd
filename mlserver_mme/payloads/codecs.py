"""SageMaker's request and response bodies for tabular models.

Requests (by Content-Type, parameters such as ``;charset=`` ignored):
``text/csv`` rows of numbers, no header (an empty cell is a missing value);
``text/libsvm`` ``[label] index:value ...`` per row, also when no Content-Type is
sent (SageMaker XGBoost's default); ``application/json`` a list of rows (or one
row); ``application/x-npy`` a NumPy array; ``application/x-recordio-protobuf``
dense float32 records as the SageMaker SDK writes them.

Request bodies are hostile input: whatever fails while reading one is a
``BadPayload`` (a 4xx naming the Content-Type), never a 500. A body decodes to a
2-D matrix of at least one row and one feature, within bounds that no real
tabular request reaches but that keep what is built from a body, and the dense
matrix a runtime may make of it, bounded:

- ``MAX_ROWS`` (1,000,000) rows: one prediction is answered per row, so this also
  bounds the response (a 6 MB body of one-feature rows is 3 million rows).
- ``MAX_COLUMNS`` (2**20, the usual size of a hashed feature space) features per row;
  a libsvm index must be in ``0 .. MAX_COLUMNS - 1``.
- ``MAX_CELLS`` (50,000,000) rows x features, which bounds a libsvm body made dense
  (200 MB as float32); a dense body of 6 MB holds at most ~6 million values anyway.
- A body with no feature at all is refused: a libsvm body of labels only (``0\\n``
  lines) asks for nothing and would get one prediction per line. A label-only row
  among rows with features is still a row (all features missing), as in
  SageMaker's XGBoost container.
- An npy body's declared shape and dtype are checked against these bounds and the
  bytes present before anything is allocated: 1 or 2 dimensions, a bool, integer or
  float dtype.
- A CSV cell or a JSON number is read as ``float()`` reads it: ``nan`` and ``inf``
  are accepted, and a number beyond float64's range is infinite (``1e999``, 400
  digits), in both formats. A JSON row holds numbers (``true``/``false`` read as 1/0)
  or ``null`` (missing); a string, list or object in a row is refused, and so is a
  JSON body nested too deeply for the parser.

Each text format has two readers that give the same matrix (bit for bit) or the same
error. The exact reader goes cell by cell in Python, as ``float()`` and ``int()``
read; it answers small bodies (under ``_FAST_FROM`` bytes, where it is the faster)
and whatever the vectorised reader does not take. The vectorised reader parses in C
(pandas' CSV parser, orjson, numpy) and only takes a body whose every spelling it
reads as ``float()`` does: it hands anything else (another byte, a ``-0`` JSON
integer, a parse error) to the exact reader, so an odd or invalid body costs what it
did before, and a valid 5 MB batch tens of milliseconds instead of hundreds
(``bench/decode.py``). A RecordIO body of same-layout records (as the SDK writes a
matrix) is sliced at once; other bodies are walked record by record.

Responses (by Accept): ``application/json`` (also for ``*/*`` or no Accept) a
JSON list; ``text/csv`` one line of comma-separated values for a vector of
predictions, one line per row for a matrix. A float32 prediction is written as
the shortest decimal of its exact (float64) value, as SageMaker's container does,
so a client parsing it gets exactly the value xgboost computed (the spelling may
differ from Python's ``repr``: ``0.00001`` for ``1e-05``). A non-finite prediction
is written as before: ``NaN``, ``Infinity``, ``-Infinity`` in JSON (as Python's
``json`` writes them), ``nan``, ``inf``, ``-inf`` in CSV.
"""

import csv
import io
import json
import math
import re
from itertools import chain
from typing import Dict, Optional, Tuple

import numpy as np
import orjson
import pandas
import scipy.sparse

from ..errors import BadPayload, UnsupportedAccept, UnsupportedContentType, describe
from ..runtimes.protocol import MAX_ROWS, Features
from . import recordio

CSV = "text/csv"
LIBSVM = "text/libsvm"
JSON = "application/json"
NPY = "application/x-npy"
RECORDIO = "application/x-recordio-protobuf"

MAX_COLUMNS = 1 << 20
MAX_CELLS = 50_000_000
_ECHO = 100  # characters of the body (or of an error about it) an error message may repeat

# Bodies from this size are read by the vectorised readers: below, their fixed cost (~0.3 ms for pandas)
# is more than the exact reader's cell by cell (~8 KB of CSV).
_FAST_FROM = 8192

_REQUEST_ALIASES = {"csv": CSV, "text/x-csv": CSV, "libsvm": LIBSVM, "text/x-libsvm": LIBSVM}
_NOT_RECTANGULAR = "the rows of the request body do not all have the same number of values"


def media_type(header: Optional[str]) -> str:
    """``text/CSV; charset=utf-8`` -> ``text/csv``."""
    return (header or "").split(";", 1)[0].strip().lower()


def decode(body: bytes, content_type: Optional[str]) -> Features:
    """The feature rows of a request body."""
    kind = media_type(content_type) or LIBSVM
    kind = _REQUEST_ALIASES.get(kind, kind)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise UnsupportedContentType(
            f"Content-Type '{_clip(content_type or '')}' is not supported; use one of {', '.join(sorted(_DECODERS))}"
        )
    if not body.strip():
        raise BadPayload("the request body is empty")
    try:
        features = decoder(body)
    except BadPayload:
        raise
    except Exception as error:  # any failure on hostile bytes (OverflowError, MemoryError, ...) is the caller's
        raise BadPayload(f"the request body is not valid {kind}: {_clip(describe(error))}") from None
    _check_shape(*features.shape)
    return features


def _check_shape(rows: int, columns: int) -> None:
    """Refuse a matrix out of bounds; called before building it where a body declares its size."""
    _check_rows(rows)
    if columns < 1:
        raise BadPayload("the request body holds no features")
    if columns > MAX_COLUMNS:
        raise BadPayload(f"a row of the request body has more than {MAX_COLUMNS} features")
    if rows * columns > MAX_CELLS:
        raise BadPayload(f"the request body has {rows} rows of {columns} features, more than {MAX_CELLS} values")


def _check_rows(rows: int) -> None:
    if rows < 1:
        raise BadPayload("the request body holds no rows")
    if rows > MAX_ROWS:
        raise BadPayload(f"the request body holds more than {MAX_ROWS} rows")


def _clip(text: str) -> str:
    return text if len(text) <= _ECHO else text[:_ECHO] + "..."


def _text(body: bytes) -> str:
    return body.decode("utf-8")


class _NotFast(Exception):
    """The vectorised reader does not take this body: the exact reader decides (its matrix or its error)."""


def _fast_or_exact(fast, exact, body: bytes) -> Features:
    if len(body) >= _FAST_FROM:
        try:
            return fast(body)
        except _NotFast:
            pass
    return exact(body)


# --- text/csv -------------------------------------------------------------------------------------


def _decode_csv(body: bytes) -> np.ndarray:
    return _fast_or_exact(_csv_fast, _csv_exact, body)


def _csv_exact(body: bytes) -> np.ndarray:
    lines = [line for line in _text(body).splitlines() if line.strip()]
    _check_rows(len(lines))  # before making millions of cells of a body refused anyway
    rows = [[float(cell) if cell.strip() else np.nan for cell in line.split(",")] for line in lines]
    return _rectangular(rows)


# The bytes the vectorised reader takes: digits, signs, points, exponents, the letters of nan/inf/infinity,
# commas, blanks, line breaks. Any other (a quote, '#', '_', a BOM, NUL, \v, Unicode digits or spaces) may be
# read differently by pandas and float(), or split lines differently from str.splitlines().
_NUMBER_BYTES = b"0123456789+-.eEnNaAiIfFtTyY"
_CSV_BYTES = _NUMBER_BYTES + b", \t\r\n"
_BLANKS = b" \t"
_CR_TO_LF = bytes.maketrans(b"\r", b"\n")
# NaN spellings pandas reads (as the NaN float() gives); float()'s others ('-nan', 'nAn') go to the exact reader.
_NAN_CELLS = ["nan", "NaN", "NAN"]
# pandas spends ~15 µs per column: a body of 1M-column rows would take 15 s (the exact reader: ~1 s).
_PANDAS_MAX_COLUMNS = 10_000
_FIRST_LINE = re.compile(rb"\n*([^\n]*)")


def _csv_fast(body: bytes) -> np.ndarray:
    if body.translate(None, _CSV_BYTES) or _blank_inside_cell(body):
        raise _NotFast
    # Blanks now only pad cells or fill blank lines, which both readers ignore: pandas need not see them. Nor
    # '\r' ('\r\n' makes a blank line more): pandas reads ',1\r\r,2' as [[nan, 1], [2, nan]].
    text = body.translate(_CR_TO_LF, _BLANKS)
    first = _FIRST_LINE.match(text)
    if first is None:
        raise _NotFast
    width = first.group(1).count(b",") + 1
    if width > _PANDAS_MAX_COLUMNS:
        raise _NotFast
    frame = _read_csv(text, dtype=np.float64, na_values=["", *_NAN_CELLS])
    matrix = np.ascontiguousarray(frame.to_numpy(dtype=np.float64))  # row-major, as np.asarray(rows) made it
    rows, columns = matrix.shape
    if columns != width:
        raise _NotFast
    _check_rows(rows)
    # pandas refuses a row longer than the first but fills a shorter one with NaN: count the cells instead.
    if text.count(b",") != rows * (columns - 1):
        raise BadPayload(_NOT_RECTANGULAR)
    return matrix


def _blank_inside_cell(body: bytes) -> bool:
    """Whether a run of spaces or tabs stands between two characters of a cell (``1 2``): float() refuses such a
    cell, but pandas reads some (``+0e 9`` as 0)."""
    if b" " not in body and b"\t" not in body:
        return False
    chars = np.frombuffer(b"\n" + body + b"\n", np.uint8)  # a line break either side: no cell beyond the body
    edges = np.diff(_is_any(chars, b" \t").view(np.int8))  # 1: a run of blanks starts next, -1: one ends here
    before, after = chars[np.flatnonzero(edges == 1)], chars[np.flatnonzero(edges == -1) + 1]
    return bool((~_is_any(before, b",\r\n") & ~_is_any(after, b",\r\n")).any())


# pandas before 3.1 reads floats correctly rounded (as float() does) only with float_precision="round_trip";
# from 3.1 every mode uses fast_float, correctly rounded, and the argument is deprecated.
_PANDAS_VERSION = tuple(int(part) for part in re.findall(r"\d+", pandas.__version__)[:2])
_EXACT_FLOATS = {} if _PANDAS_VERSION >= (3, 1) else {"float_precision": "round_trip"}


def _read_csv(text: bytes, **options) -> pandas.DataFrame:
    """pandas' C parser with nothing read differently from float(): no header, quotes, comments or default NaN words."""
    try:
        return pandas.read_csv(
            io.BytesIO(text), header=None, engine="c", quoting=csv.QUOTE_NONE, keep_default_na=False,
            **_EXACT_FLOATS, **options,
        )
    except Exception:  # a cell that is not a number, a row longer than the first, ...: the exact reader names it
        raise _NotFast from None


# --- application/json -----------------------------------------------------------------------------


def _decode_json(body: bytes) -> np.ndarray:
    return _fast_or_exact(_json_fast, _json_exact, body)


def _json_exact(body: bytes) -> np.ndarray:
    try:
        data = json.loads(body, parse_int=float)  # as float() reads it: no OverflowError for 400 digits
    except RecursionError:  # the parser recurses once per nested '[' or '{'
        raise BadPayload("the JSON body is nested too deeply") from None
    rows = _json_rows(data)
    return _rectangular([_json_row(row) for row in rows])


def _json_rows(data) -> list:
    if isinstance(data, dict) and "instances" in data:  # the TensorFlow-serving shape some clients send
        data = data["instances"]
    if not isinstance(data, list) or not data:
        raise BadPayload("a JSON body must be a non-empty list of rows (or one row of numbers)")
    rows = data if isinstance(data[0], list) else [data]
    _check_rows(len(rows))
    return rows


def _json_row(row) -> list:
    if not isinstance(row, list):
        raise BadPayload("a JSON body must be a list of rows, each a list of numbers")
    return [_json_value(value) for value in row]


def _json_value(value) -> float:
    """A number (bool included, as before) or null for a missing value; nothing else is a feature."""
    if value is None:
        return np.nan
    if not isinstance(value, (float, int)):
        raise BadPayload(f"a JSON row must hold numbers or null, not {_JSON_TYPES.get(type(value), 'that')}")
    return float(value)


_JSON_TYPES: Dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


def _json_fast(body: bytes) -> np.ndarray:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:  # NaN, 1e999, a BOM, UTF-16, nesting over 1024, ...: json decides
        raise _NotFast from None
    # No string or object but the {"instances": ...} wrapper: what is left is lists, numbers, booleans and null.
    strings, objects = body.count(b'"'), body.count(b"{")
    if (strings, objects) != ((2, 1) if isinstance(data, dict) else (0, 0)) or _NEGATIVE_ZERO.search(body):
        raise _NotFast
    rows = _json_rows(data)
    try:
        matrix = np.array(rows, dtype=np.float64)  # null is NaN, true 1.0; an int is rounded as float() rounds it
    except (ValueError, TypeError):  # rows of different lengths, a list in a row: the exact reader names it
        raise _NotFast from None
    if matrix.ndim != 2:
        raise _NotFast
    return matrix


# The integer -0, which orjson reads as 0 and float() as -0.0 (or an exponent -0, '1e-0', sent to json too).
_NEGATIVE_ZERO = re.compile(rb"-0(?![.eE0-9])")


# --- application/x-npy ----------------------------------------------------------------------------


def _decode_npy(body: bytes) -> np.ndarray:
    # The header declares any shape: check it before np.load allocates it.
    stream = io.BytesIO(body)
    shape, dtype = _npy_header(stream)
    if len(shape) not in (1, 2) or dtype.kind not in "fiub":
        raise BadPayload(_clip(f"an npy body must hold a 1- or 2-dimensional numeric array, not {dtype} {shape}"))
    rows, columns = shape if len(shape) == 2 else (1, shape[0])
    _check_shape(rows, columns)
    if rows * columns * dtype.itemsize > len(body) - stream.tell():
        raise BadPayload(f"the npy body is shorter than the {dtype} array of shape {shape} its header declares")
    array = np.load(io.BytesIO(body), allow_pickle=False)
    array = array.astype(array.dtype.newbyteorder("="), copy=False)  # big-endian: XGBoost reads native order only
    return array.reshape(1, -1) if array.ndim == 1 else array


def _npy_header(stream: io.BytesIO) -> Tuple[tuple, np.dtype]:
    """The shape and dtype an npy body declares, read without loading the array."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):  # 3.0 is 2.0 with a UTF-8 header: the same for the ASCII of numeric dtypes
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported")
    return shape, dtype


# --- text/libsvm ----------------------------------------------------------------------------------


def _decode_libsvm(body: bytes) -> scipy.sparse.csr_matrix:
    return _fast_or_exact(_libsvm_fast, _libsvm_exact, body)


def _libsvm_exact(body: bytes) -> scipy.sparse.csr_matrix:
    indptr, indices, values = [0], [], []
    for line in _text(body).splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if ":" not in tokens[0]:
            tokens = tokens[1:]  # the label, ignored at inference
        for token in tokens:
            index, value = token.split(":", 1)
            column = int(index)
            if not 0 <= column < MAX_COLUMNS:  # before it sizes the matrix (or overflows int64)
                raise BadPayload(_index_out_of_bounds(index))
            indices.append(column)
            values.append(float(value))
        indptr.append(len(indices))
    return _csr(np.asarray(values, dtype=np.float32), np.asarray(indices, dtype=np.int64), np.asarray(indptr))


def _index_out_of_bounds(index: str) -> str:
    return _clip(f"a libsvm feature index must be in 0..{MAX_COLUMNS - 1}, not {index}")


def _csr(values: np.ndarray, indices: np.ndarray, indptr: np.ndarray) -> scipy.sparse.csr_matrix:
    _refuse_repeated_indices(indices, indptr)
    rows = len(indptr) - 1
    columns = int(indices.max()) + 1 if len(indices) else 0  # 0 for labels only: refused, not a prediction per line
    _check_shape(rows, columns)
    return scipy.sparse.csr_matrix((values, indices, indptr), shape=(rows, columns))


def _refuse_repeated_indices(indices: np.ndarray, indptr: np.ndarray) -> None:
    """A row naming a feature twice has no one meaning (XGBoost and Treelite each take another
    value), so it is refused rather than answered one way or the other."""
    ascending = indices[1:] > indices[:-1]
    starts = indptr[1:-1]
    ascending[starts[(starts > 0) & (starts < len(indices))] - 1] = True  # a row's first index may be anything
    if ascending.all():  # the usual case, in one pass
        return
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    keys = np.sort(rows * MAX_COLUMNS + indices)
    repeated = keys[1:] == keys[:-1]
    if repeated.any():
        row, column = divmod(int(keys[np.argmax(repeated)]), MAX_COLUMNS)
        raise BadPayload(f"libsvm row {row + 1} names feature {column} more than once")


# Blanks and line breaks are the only separators among these bytes (str.split() also splits on \v, \f, \x1c...).
_LIBSVM_BYTES = _NUMBER_BYTES + b": \t\r\n"


def _libsvm_fast(body: bytes) -> scipy.sparse.csr_matrix:
    if body.translate(None, _LIBSVM_BYTES):
        raise _NotFast
    chars = np.frombuffer(body, np.uint8)
    starts, ends = _token_spans(chars)
    if not len(starts):
        raise _NotFast
    breaks, colons = _counts_before(chars, b"\r\n"), _counts_before(chars, b":")
    opens_line = np.ones(len(starts), dtype=bool)
    opens_line[1:] = breaks[starts[1:]] > breaks[ends[:-1]]  # a line break between it and the token before
    rows = np.cumsum(opens_line) - 1  # lines without a token are no row
    has_colon = colons[ends] > colons[starts]
    label = opens_line & ~has_colon  # a line's first token without ':', ignored at inference
    feature = ~label
    indptr = np.zeros(int(rows[-1]) + 2, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(rows[feature], minlength=len(indptr) - 1))
    if not feature.any():
        return _csr(np.zeros(0, np.float32), np.zeros(0, np.int64), indptr)  # refused: no features
    if not has_colon[feature].all():
        raise _NotFast  # a feature without ':': the exact reader names it
    labels = starts[label], ends[label]
    starts, ends = starts[feature], ends[feature]
    split = np.flatnonzero(chars == ord(":"))[colons[starts]]  # each feature's first ':'
    if not _integer_spans(chars, starts, split) or (split + 1 == ends).any():
        raise _NotFast  # an index int() refuses ('1.0', '', '+'), or an empty value float() refuses
    frame = _read_csv(
        _index_value_lines(chars, labels, split), dtype={0: np.int64, 1: np.float64}, na_values={1: _NAN_CELLS}
    )
    if frame.shape != (len(split), 2):
        raise _NotFast
    indices, values = frame[0].to_numpy(np.int64), frame[1].to_numpy(np.float64)
    out = (indices < 0) | (indices >= MAX_COLUMNS)
    if out.any():  # the first one, where the exact reader stops
        first = int(np.argmax(out))
        raise BadPayload(_index_out_of_bounds(body[starts[first] : split[first]].decode()))
    return _csr(values.astype(np.float32), indices, indptr)


def _is_any(chars: np.ndarray, choices: bytes) -> np.ndarray:
    """Which of ``chars`` are one of ``choices`` (a few ==, faster than np.isin)."""
    found = chars == choices[0]
    for choice in choices[1:]:
        found |= chars == choice
    return found


def _counts_before(chars: np.ndarray, choices: bytes) -> np.ndarray:
    """For each position 0..len(chars), how many of the characters before it are one of ``choices``."""
    counts = np.zeros(len(chars) + 1, dtype=np.int32)  # a body is at most a few MB
    np.cumsum(_is_any(chars, choices), out=counts[1:])
    return counts


def _token_spans(chars: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Where each run of bytes other than blanks and line breaks starts, and ends (exclusive)."""
    blank = _is_any(chars, b" \t\r\n").view(np.int8)
    edges = np.diff(blank, prepend=np.int8(1), append=np.int8(1))  # -1: a token starts, 1: it has ended
    return np.flatnonzero(edges == -1), np.flatnonzero(edges == 1)


def _integer_spans(chars: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether each span of ``chars`` is an optional sign then digits, as int() reads an index here."""
    signed = _is_any(chars[starts], b"+-")
    if (ends - starts <= signed).any():  # nothing, or a sign alone
        return False
    spans = chars[_ranges(starts, ends)]
    digits = np.count_nonzero((spans >= ord("0")) & (spans <= ord("9")))
    return len(spans) - digits == np.count_nonzero(signed)  # no byte but digits and the leading signs


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions from each start to its end (exclusive), one range after the other."""
    lengths = ends - starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


_ONE_TOKEN_A_LINE = bytes.maketrans(b" \t\r", b"\n\n\n")


def _index_value_lines(chars: np.ndarray, labels: Tuple[np.ndarray, np.ndarray], split: np.ndarray) -> bytes:
    """The features as CSV lines ``index,value`` for pandas' C parser (a label becomes a blank line)."""
    text = chars.copy()
    text[_ranges(*labels)] = ord(" ")
    text[split] = ord(",")
    return text.tobytes().translate(_ONE_TOKEN_A_LINE)


def _rectangular(rows: list) -> np.ndarray:
    width = len(rows[0]) if rows else 0
    if any(len(row) != width for row in rows):
        raise BadPayload(_NOT_RECTANGULAR)
    _check_shape(len(rows), width)
    return np.asarray(rows, dtype=np.float64)


# --- application/x-recordio-protobuf --------------------------------------------------------------


def _decode_recordio(body: bytes) -> np.ndarray:
    return _fast_or_exact(_recordio_fast, _recordio_exact, body)


def _recordio_exact(body: bytes) -> np.ndarray:
    return recordio.decode_dense(body, max_records=MAX_ROWS)


def _recordio_fast(body: bytes) -> np.ndarray:
    rows = recordio.decode_same_layout(body, max_records=MAX_ROWS)
    if rows is None:  # records of different layouts (or not records): read one by one
        raise _NotFast
    return rows


_DECODERS = {
    CSV: _decode_csv,
    LIBSVM: _decode_libsvm,
    JSON: _decode_json,
    NPY: _decode_npy,
    RECORDIO: _decode_recordio,
}


# --- responses ------------------------------------------------------------------------------------


def negotiate(accept: Optional[str]) -> str:
    """The response media type for an Accept header; raises UnsupportedAccept."""
    if not accept or not accept.strip():
        return JSON
    for candidate in accept.split(","):
        kind = media_type(candidate)
        if kind in ("*/*", "application/*", JSON):
            return JSON
        if kind in (CSV, "text/*"):
            return CSV
    raise UnsupportedAccept(f"Accept '{accept}' is not supported; use {JSON} or {CSV}")


def encode(predictions: np.ndarray, kind: str) -> Tuple[bytes, str]:
    """Body and Content-Type of a response holding ``predictions``."""
    if predictions.ndim not in (1, 2) or predictions.dtype.kind not in "fiu":
        return _encode_objects(predictions, kind)  # bool, strings, 0 or 3 dimensions: rare, written as before
    text = _json_numbers(predictions, _CSV_NON_FINITE if kind == CSV else _JSON_NON_FINITE)
    if kind == CSV:  # the JSON array without its brackets: '[1.5,2.0]', '[[1.5,2.0],[3.0,4.0]]'
        return (text[1:-1] if predictions.ndim == 1 else text[2:-2].replace(b"],[", b"\n")), CSV
    return text, JSON


_SMALL_ANSWER = 64
# What json.dumps and repr() wrote for NaN, inf and -inf (orjson writes null).
_JSON_NON_FINITE = (b"NaN", b"Infinity", b"-Infinity")
_CSV_NON_FINITE = (b"nan", b"inf", b"-inf")


def _json_numbers(predictions: np.ndarray, non_finite: Tuple[bytes, bytes, bytes]) -> bytes:
    """A JSON array of the numbers, each float the shortest decimal of its exact value."""
    if predictions.size <= _SMALL_ANSWER:
        # A few values (one-row requests): Python floats hold each float32 exactly, and orjson writes
        # them without numpy's per-call costs. A non-finite one takes the path below.
        values = predictions.tolist()
        if all(map(math.isfinite, chain.from_iterable(values) if predictions.ndim == 2 else values)):
            return orjson.dumps(values)
    if predictions.dtype.kind == "f":
        predictions = predictions.astype(np.float64, order="C")  # orjson writes a float32 as a float32 decimal
    else:  # orjson takes native, C-ordered arrays only
        predictions = predictions.astype(predictions.dtype.newbyteorder("="), order="C", copy=False)
    text = orjson.dumps(predictions, option=orjson.OPT_SERIALIZE_NUMPY)
    if predictions.dtype.kind == "f" and not np.isfinite(predictions).all():
        text = _spell_non_finite(text, predictions, non_finite)
    return text


def _spell_non_finite(text: bytes, predictions: np.ndarray, spelling: Tuple[bytes, bytes, bytes]) -> bytes:
    """orjson's ``null`` for each NaN or infinity, in order, spelled as before (a Python step for each of them only)."""
    odd = predictions[~np.isfinite(predictions)]  # in the order orjson wrote them
    words = [spelling[0] if np.isnan(value) else spelling[1] if value > 0 else spelling[2] for value in odd.tolist()]
    pieces = text.split(b"null")  # no other null in an array of numbers
    return b"".join(chain.from_iterable(zip(pieces, words))) + pieces[-1]


def _encode_objects(predictions: np.ndarray, kind: str) -> Tuple[bytes, str]:
    values = predictions.tolist()
    if kind == CSV:
        if predictions.ndim <= 1:
            return ",".join(map(repr, values)).encode(), CSV
        return "\n".join(",".join(map(repr, row)) for row in values).encode(), CSV
    return json.dumps(values).encode(), JSON
