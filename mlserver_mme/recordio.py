"""Reading ``application/x-recordio-protobuf`` request bodies (dense tensors).

The format the SageMaker SDK writes (``write_numpy_to_dense_tensor``): RecordIO
frames, each ``0xCED7230A``, a 32-bit length word (low 29 bits: length, high 3
bits: continuation flag, 0 for a whole record), the payload padded to 4 bytes.
Each payload is a protobuf ``Record`` whose ``features`` map holds, under the key
``values``, a ``Float32Tensor`` (or ``Float64Tensor`` / ``Int32Tensor``) of one row.
Only the few protobuf wire rules these messages use are implemented here.
"""

import struct
from typing import Dict, Iterator, List, Tuple

import numpy as np

MAGIC = 0xCED7230A

# Field numbers of SageMaker's record.proto.
RECORD_FEATURES = 1
VALUE_FLOAT32, VALUE_FLOAT64, VALUE_INT32 = 2, 3, 7
TENSOR_VALUES, TENSOR_KEYS = 1, 2

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def decode_dense(body: bytes) -> np.ndarray:
    """The rows of a RecordIO-protobuf body, as a 2-D array."""
    rows = [_record_row(payload) for payload in _frames(body)]
    if not rows:
        raise ValueError("no records")
    if any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("records have different lengths")
    return np.vstack(rows)


def _frames(body: bytes) -> Iterator[bytes]:
    position = 0
    while position < len(body):
        if len(body) - position < 8:
            raise ValueError("truncated RecordIO header")
        magic, word = struct.unpack_from("<II", body, position)
        if magic != MAGIC:
            raise ValueError("not a RecordIO frame (bad magic number)")
        if word >> 29:
            raise ValueError("multi-part RecordIO records are not supported")
        length = word & ((1 << 29) - 1)
        start = position + 8
        if start + length > len(body):
            raise ValueError("truncated RecordIO record")
        yield body[start : start + length]
        position = start + length + (-length % 4)


def _record_row(payload: bytes) -> np.ndarray:
    for number, value in _fields(payload):
        if number != RECORD_FEATURES:
            continue
        entry = _message(value)
        if entry.get(1, [b""])[0] == b"values" and 2 in entry:
            return _tensor(_message(entry[2][0]))
    raise ValueError("a record has no 'values' feature")


def _tensor(value: Dict[int, List]) -> np.ndarray:
    for kind, dtype, wire in ((VALUE_FLOAT32, "<f4", _FIXED32), (VALUE_FLOAT64, "<f8", _FIXED64), (VALUE_INT32, None, _VARINT)):
        if kind not in value:
            continue
        tensor = _message(value[kind][0], keep_wire=True)
        if TENSOR_KEYS in tensor:
            raise ValueError("sparse tensors (with keys) are not supported; send dense rows")
        parts = tensor.get(TENSOR_VALUES, [])
        return _numbers(parts, dtype, wire)
    raise ValueError("a record's values are not a float32, float64 or int32 tensor")


def _numbers(parts: List[Tuple[int, object]], dtype, wire: int) -> np.ndarray:
    """Values of a repeated numeric field, packed or not."""
    chunks = []
    for part_wire, data in parts:
        if part_wire == _LENGTH:  # packed
            if dtype is None:
                chunks.append(np.array(list(_varints(data)), dtype=np.int64))
            else:
                chunks.append(np.frombuffer(data, dtype=dtype))
        elif part_wire == wire:
            chunks.append(np.array([data], dtype=np.float64 if dtype else np.int64))
        else:
            raise ValueError("unexpected encoding of tensor values")
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float64 if dtype == "<f8" else np.float32)


def _message(data: bytes, keep_wire: bool = False) -> Dict[int, List]:
    fields: Dict[int, List] = {}
    for number, value, wire in _fields(data, with_wire=True):
        fields.setdefault(number, []).append((wire, value) if keep_wire else value)
    return fields


def _fields(data: bytes, with_wire: bool = False):
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, position = _varint(data, position)
        elif wire == _FIXED64:
            (value,) = struct.unpack_from("<d", data, position)
            position += 8
        elif wire == _FIXED32:
            (value,) = struct.unpack_from("<f", data, position)
            position += 4
        elif wire == _LENGTH:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated protobuf field")
            value = data[position : position + length]
            position += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield (number, value, wire) if with_wire else (number, value)


def _varint(data: bytes, position: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("protobuf varint too long")


def _varints(data: bytes) -> Iterator[int]:
    position = 0
    while position < len(data):
        value, position = _varint(data, position)
        yield value - (1 << 64) if value >= 1 << 63 else value
