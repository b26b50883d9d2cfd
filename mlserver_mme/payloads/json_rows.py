"""Decoding ``application/json`` request bodies: a list of rows (or one row), or ``{"instances": ...}``.

Limits as for every body (``limits``): at most ``MAX_ROWS`` rows, ``MAX_COLUMNS`` features,
``MAX_CELLS`` values; rows of the same length holding numbers (``true``/``false`` read as 1/0)
or ``null`` (missing), nothing else; a body nested too deeply for the parser is refused. The
exact reader is Python's ``json``; the vectorised one (orjson and numpy, from ``_FAST_FROM``
bytes) takes only bodies it reads as ``json`` and ``float()`` do.
"""

import json
import re
from typing import Dict

import numpy as np
import orjson

from ..errors import BadPayload
from .limits import _check_rows, _fast_or_exact, _NotFast, _rectangular


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
