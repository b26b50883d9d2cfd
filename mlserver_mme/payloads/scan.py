"""Byte and NumPy helpers shared by the vectorised text readers (``text/csv`` and ``text/libsvm``).

``_NUMBER_BYTES`` are the bytes of the number spellings they take, ``_NAN_CELLS`` the NaN
spellings pandas reads as ``float()`` does, and ``_read_csv`` pandas' C parser set up to read
nothing differently from ``float()``; whatever it refuses is ``_NotFast`` (the exact reader decides).
"""

import csv
import io
import re

import numpy as np
import pandas

from .limits import _NotFast

# The bytes of the number spellings the vectorised readers take: digits, signs, points, exponents, the letters of
# nan/inf/infinity.
_NUMBER_BYTES = b"0123456789+-.eEnNaAiIfFtTyY"
# NaN spellings pandas reads (as the NaN float() gives); float()'s others ('-nan', 'nAn') go to the exact reader.
_NAN_CELLS = ["nan", "NaN", "NAN"]


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


def _is_any(chars: np.ndarray, choices: bytes) -> np.ndarray:
    """Which of ``chars`` are one of ``choices`` (a few ==, faster than np.isin)."""
    found = chars == choices[0]
    for choice in choices[1:]:
        found |= chars == choice
    return found
