"""Decoding ``text/csv`` request bodies: rows of numbers, no header, an empty cell a missing value.

Limits as for every body (``limits``): at most ``MAX_ROWS`` rows (checked before the cells are
read), ``MAX_COLUMNS`` features, ``MAX_CELLS`` values; rows must all have the same number of
cells. A cell is read as ``float()`` reads it. The exact reader goes line by line in Python;
the vectorised reader (pandas' C parser, from ``_FAST_FROM`` bytes) takes only bodies of the
bytes below and rows of at most ``_PANDAS_MAX_COLUMNS`` cells.
"""

import re

import numpy as np

from ..errors import BadPayload
from .limits import _NOT_RECTANGULAR, _check_rows, _fast_or_exact, _NotFast, _rectangular, _text
from .scan import _NAN_CELLS, _NUMBER_BYTES, _is_any, _read_csv


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
_CSV_BYTES = _NUMBER_BYTES + b", \t\r\n"
_BLANKS = b" \t"
_CR_TO_LF = bytes.maketrans(b"\r", b"\n")
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
