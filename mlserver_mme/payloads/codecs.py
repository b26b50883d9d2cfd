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

This module dispatches on the Content-Type (``decode``) and re-exports the rest: each content
type is read in a module of its own (``csv_rows``, ``json_rows``, ``npy``, ``libsvm``,
``recordio_protobuf`` over ``recordio``); the bounds and the two-reader machinery they share are
in ``limits`` and ``scan``, the media types in ``media``, and responses are written by ``encoding``.
"""

from typing import Optional

from ..errors import BadPayload, UnsupportedContentType, describe
from ..runtimes.protocol import MAX_ROWS, Features
from .csv_rows import _decode_csv
from .encoding import encode, negotiate
from .json_rows import _decode_json
from .libsvm import _decode_libsvm
from .limits import MAX_CELLS, MAX_COLUMNS, _check_shape, _clip
from .media import CSV, JSON, LIBSVM, NPY, RECORDIO, media_type
from .npy import _decode_npy
from .recordio_protobuf import _decode_recordio

__all__ = [
    "CSV", "JSON", "LIBSVM", "NPY", "RECORDIO", "MAX_CELLS", "MAX_COLUMNS", "MAX_ROWS", "Features",
    "decode", "encode", "media_type", "negotiate",
]

_REQUEST_ALIASES = {"csv": CSV, "text/x-csv": CSV, "libsvm": LIBSVM, "text/x-libsvm": LIBSVM}


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


_DECODERS = {
    CSV: _decode_csv,
    LIBSVM: _decode_libsvm,
    JSON: _decode_json,
    NPY: _decode_npy,
    RECORDIO: _decode_recordio,
}
