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
- A body with no feature at all is refused: a libsvm body of labels only (``0\n``
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

Responses (by Accept): ``application/json`` (also for ``*/*`` or no Accept) a
JSON list; ``text/csv`` one line of comma-separated values for a vector of
predictions, one line per row for a matrix. A float32 prediction is written as
the shortest decimal of its exact (float64) value, as SageMaker's container does,
so a client parsing it gets exactly the value xgboost computed.
"""

import io
import json
from typing import Optional, Tuple, Union

import numpy as np
import scipy.sparse

from . import recordio
from .errors import BadPayload, UnsupportedAccept, UnsupportedContentType, describe

Features = Union[np.ndarray, scipy.sparse.csr_matrix]

CSV = "text/csv"
LIBSVM = "text/libsvm"
JSON = "application/json"
NPY = "application/x-npy"
RECORDIO = "application/x-recordio-protobuf"

MAX_ROWS = 1_000_000
MAX_COLUMNS = 1 << 20
MAX_CELLS = 50_000_000
_ECHO = 100  # characters of the body (or of an error about it) an error message may repeat

_REQUEST_ALIASES = {"csv": CSV, "text/x-csv": CSV, "libsvm": LIBSVM, "text/x-libsvm": LIBSVM}


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
            f"Content-Type '{_clip(content_type)}' is not supported; use one of {', '.join(sorted(_DECODERS))}"
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


def _decode_csv(body: bytes) -> np.ndarray:
    lines = [line for line in _text(body).splitlines() if line.strip()]
    _check_rows(len(lines))  # before making millions of cells of a body refused anyway
    rows = [[float(cell) if cell.strip() else np.nan for cell in line.split(",")] for line in lines]
    return _rectangular(rows)


def _decode_json(body: bytes) -> np.ndarray:
    try:
        data = json.loads(body, parse_int=float)  # as float() reads it: no OverflowError for 400 digits
    except RecursionError:  # the parser recurses once per nested '[' or '{'
        raise BadPayload("the JSON body is nested too deeply") from None
    if isinstance(data, dict) and "instances" in data:  # the TensorFlow-serving shape some clients send
        data = data["instances"]
    if not isinstance(data, list) or not data:
        raise BadPayload("a JSON body must be a non-empty list of rows (or one row of numbers)")
    rows = data if isinstance(data[0], list) else [data]
    _check_rows(len(rows))
    return _rectangular([_json_row(row) for row in rows])


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


_JSON_TYPES = {str: "a string", list: "a list", dict: "an object"}


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


def _decode_libsvm(body: bytes) -> scipy.sparse.csr_matrix:
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
                raise BadPayload(_clip(f"a libsvm feature index must be in 0..{MAX_COLUMNS - 1}, not {index}"))
            indices.append(column)
            values.append(float(value))
        indptr.append(len(indices))
    columns = max(indices) + 1 if indices else 0  # 0 for labels only: refused, not a prediction per line
    _check_shape(len(indptr) - 1, columns)
    return scipy.sparse.csr_matrix(
        (np.asarray(values, dtype=np.float32), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
        shape=(len(indptr) - 1, columns),
    )


def _rectangular(rows: list) -> np.ndarray:
    width = len(rows[0]) if rows else 0
    if any(len(row) != width for row in rows):
        raise BadPayload("the rows of the request body do not all have the same number of values")
    _check_shape(len(rows), width)
    return np.asarray(rows, dtype=np.float64)


def _decode_recordio(body: bytes) -> np.ndarray:
    return recordio.decode_dense(body, max_records=MAX_ROWS)


_DECODERS = {
    CSV: _decode_csv,
    LIBSVM: _decode_libsvm,
    JSON: _decode_json,
    NPY: _decode_npy,
    RECORDIO: _decode_recordio,
}


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
    values = predictions.tolist()
    if kind == CSV:
        if predictions.ndim <= 1:
            return ",".join(map(repr, values)).encode(), CSV
        return "\n".join(",".join(map(repr, row)) for row in values).encode(), CSV
    return json.dumps(values).encode(), JSON
