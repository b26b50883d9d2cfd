"""What every request decoder shares: the bounds on a decoded matrix and the two-reader machinery.

A body decodes to a 2-D matrix of at least one row and one feature, within ``MAX_ROWS``
(1,000,000) rows, ``MAX_COLUMNS`` (2**20) features and ``MAX_CELLS`` (50,000,000) values
(see ``codecs``). Error messages repeat at most ``_ECHO`` characters of the body. A text
body from ``_FAST_FROM`` bytes is first offered to its format's vectorised reader, which
raises ``_NotFast`` for anything it does not take; the exact reader then decides.
"""

import numpy as np

from ..errors import BadPayload
from ..runtimes.protocol import MAX_ROWS, Features

MAX_COLUMNS = 1 << 20
MAX_CELLS = 50_000_000
_ECHO = 100  # characters of the body (or of an error about it) an error message may repeat

# Bodies from this size are read by the vectorised readers: below, their fixed cost (~0.3 ms for pandas)
# is more than the exact reader's cell by cell (~8 KB of CSV).
_FAST_FROM = 8192

_NOT_RECTANGULAR = "the rows of the request body do not all have the same number of values"


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


def _rectangular(rows: list) -> np.ndarray:
    width = len(rows[0]) if rows else 0
    if any(len(row) != width for row in rows):
        raise BadPayload(_NOT_RECTANGULAR)
    _check_shape(len(rows), width)
    return np.asarray(rows, dtype=np.float64)
