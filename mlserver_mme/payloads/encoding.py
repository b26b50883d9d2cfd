"""Response bodies: ``negotiate`` picks the media type for an Accept header, ``encode`` writes predictions.

``application/json`` (also for ``*/*`` or no Accept) a JSON list; ``text/csv`` one line for a
vector, one line per row for a matrix. Floats are written as the shortest decimal of their
exact value; non-finite values as ``NaN``/``Infinity``/``-Infinity`` in JSON and
``nan``/``inf``/``-inf`` in CSV.
"""

import json
import math
from itertools import chain
from typing import Optional, Tuple

import numpy as np
import orjson

from ..errors import UnsupportedAccept
from .media import CSV, JSON, media_type


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
