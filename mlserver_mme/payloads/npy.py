"""Decoding ``application/x-npy`` request bodies: one NumPy array.

Its declared shape and dtype are checked before anything is allocated: 1 or 2 dimensions
(a vector is one row), a bool, integer or float dtype, within the bounds of ``limits``, and
no more values than the bytes present. Pickled (object) arrays are refused.
"""

import io
from typing import Tuple

import numpy as np

from ..errors import BadPayload
from .limits import _check_shape, _clip


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
    array = array.astype(array.dtype.newbyteorder("="), copy=False)  # big-endian: XGBoost reads native order only
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
