"""Decoding ``text/libsvm`` request bodies: ``[label] index:value ...`` per row (also bodies without a Content-Type).

Limits as for every body (``limits``): an index must be in ``0 .. MAX_COLUMNS - 1``, the
matrix (as wide as the largest index) within ``MAX_ROWS`` rows and ``MAX_CELLS`` values, and
a body of labels only (no feature at all) is refused; a row naming a feature twice is refused.
The exact reader goes token by token in Python (``int()`` and ``float()``); the vectorised one
(numpy and pandas' C parser, from ``_FAST_FROM`` bytes) takes only bodies it reads the same.
"""

from typing import Tuple

import numpy as np
import scipy.sparse

from ..errors import BadPayload
from .limits import MAX_COLUMNS, _check_shape, _clip, _fast_or_exact, _NotFast, _text
from .scan import _NAN_CELLS, _NUMBER_BYTES, _is_any, _read_csv


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
