"""SageMaker's request and response bodies for tabular models.

Requests (by Content-Type, parameters such as ``;charset=`` ignored):
``text/csv`` rows of numbers, no header (an empty cell is a missing value);
``text/libsvm`` ``[label] index:value ...`` per row, also when no Content-Type is
sent (SageMaker XGBoost's default); ``application/json`` a list of rows (or one
row); ``application/x-npy`` a NumPy array; ``application/x-recordio-protobuf``
dense float32 records as the SageMaker SDK writes them.

Responses (by Accept): ``application/json`` (also for ``*/*`` or no Accept) a
JSON list; ``text/csv`` one line of comma-separated values for a vector of
predictions, one line per row for a matrix. A float32 prediction is written as
the shortest decimal of its exact (float64) value, as SageMaker's container does,
so a client parsing it gets exactly the value xgboost computed.
"""

import io
import json
import struct
from typing import Optional, Tuple, Union

import numpy as np
import scipy.sparse

from . import recordio
from .errors import BadPayload, UnsupportedAccept, UnsupportedContentType

Features = Union[np.ndarray, scipy.sparse.csr_matrix]

CSV = "text/csv"
LIBSVM = "text/libsvm"
JSON = "application/json"
NPY = "application/x-npy"
RECORDIO = "application/x-recordio-protobuf"

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
            f"Content-Type '{content_type}' is not supported; use one of {', '.join(sorted(_DECODERS))}"
        )
    if not body.strip():
        raise BadPayload("the request body is empty")
    try:
        return decoder(body)
    except BadPayload:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, EOFError, struct.error) as error:
        raise BadPayload(f"the request body is not valid {kind}: {error}") from None


def _text(body: bytes) -> str:
    return body.decode("utf-8")


def _decode_csv(body: bytes) -> np.ndarray:
    lines = [line for line in _text(body).splitlines() if line.strip()]
    rows = [[float(cell) if cell.strip() else np.nan for cell in line.split(",")] for line in lines]
    return _rectangular(rows)


def _decode_json(body: bytes) -> np.ndarray:
    data = json.loads(body)
    if isinstance(data, dict) and "instances" in data:  # the TensorFlow-serving shape some clients send
        data = data["instances"]
    if not isinstance(data, list) or not data:
        raise BadPayload("a JSON body must be a non-empty list of rows (or one row of numbers)")
    rows = data if isinstance(data[0], list) else [data]
    return _rectangular([[np.nan if value is None else float(value) for value in row] for row in rows])


def _decode_npy(body: bytes) -> np.ndarray:
    array = np.load(io.BytesIO(body), allow_pickle=False)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.dtype.kind not in "fiub":
        raise BadPayload(f"an npy body must hold a 1- or 2-dimensional numeric array, not {array.dtype} {array.shape}")
    return array


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
            if column < 0:
                raise BadPayload(f"negative feature index in '{token}'")
            indices.append(column)
            values.append(float(value))
        indptr.append(len(indices))
    columns = max(indices) + 1 if indices else 0
    return scipy.sparse.csr_matrix(
        (np.asarray(values, dtype=np.float32), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
        shape=(len(indptr) - 1, columns),
    )


def _rectangular(rows: list) -> np.ndarray:
    if not rows:
        raise BadPayload("the request body holds no rows")
    width = len(rows[0])
    if any(len(row) != width for row in rows):
        raise BadPayload("the rows of the request body do not all have the same number of values")
    return np.asarray(rows, dtype=np.float64)


_DECODERS = {
    CSV: _decode_csv,
    LIBSVM: _decode_libsvm,
    JSON: _decode_json,
    NPY: _decode_npy,
    RECORDIO: recordio.decode_dense,
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
