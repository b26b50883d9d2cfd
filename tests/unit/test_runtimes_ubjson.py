"""The UBJSON writer: XGBoost's own layout (its reading of converted models is in the matrix tests)."""

import struct

import numpy as np
import pytest

from mlserver_mme.runtimes import ubjson


def _int64(value: int) -> bytes:
    return struct.pack(">q", value)


def test_values_are_written_as_xgboost_writes_them():
    written = ubjson.dumps({"n": "3", "v": [1, 0.5, True], "a": np.asarray([1, -2], dtype="<i4")})
    assert written == (
        b"{"
        + b"L" + _int64(1) + b"n" + b"SL" + _int64(1) + b"3"
        + b"L" + _int64(1) + b"v" + b"[#L" + _int64(3) + b"L" + _int64(1) + b"d" + struct.pack(">f", 0.5) + b"T"
        + b"L" + _int64(1) + b"a" + b"[$l#L" + _int64(2) + struct.pack(">ii", 1, -2)
        + b"}"
    )


@pytest.mark.parametrize("dtype, marker, layout", [("<f4", b"d", ">f"), ("<i8", b"L", ">q"), ("u1", b"U", ">B")])
def test_typed_arrays_are_big_endian_with_their_marker(dtype, marker, layout):
    values = np.asarray([1, 2], dtype=dtype)
    assert ubjson.dumps(values) == b"[$" + marker + b"#L" + _int64(2) + struct.pack(">" + layout[1] * 2, 1, 2)


@pytest.mark.parametrize("value", [None, {1: "a"}, np.zeros((2, 2), dtype="<f4"), np.zeros(2, dtype="<f8")])
def test_what_xgboost_models_do_not_hold_is_refused(value):
    with pytest.raises((TypeError, KeyError, AttributeError)):
        ubjson.dumps(value)
