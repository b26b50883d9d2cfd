"""Reading ``application/x-recordio-protobuf`` request bodies (dense tensors).

The format the SageMaker SDK writes (``write_numpy_to_dense_tensor``): RecordIO
frames, each ``0xCED7230A``, a 32-bit length word (low 29 bits: length, high 3
bits: continuation flag, 0 for a whole record), the payload padded to 4 bytes.
Each payload is a protobuf ``Record`` whose ``features`` map holds, under the key
``values``, a ``Float32Tensor`` (or ``Float64Tensor`` / ``Int32Tensor``) of one row.
Only the few protobuf wire rules these messages use are implemented here.

Bodies are hostile: every malformed input raises ``ValueError`` (or ``struct.error``),
and what is kept while reading stays proportional to the values read: at most
``max_records`` records, only the fields read are kept, varints of at most 64 bits.

``decode_dense`` walks the records one by one in Python (~7 µs each). A matrix written
by the SDK is records of one layout, the same bytes but for the values: for such a
body, ``decode_same_layout`` reads the first record that way, checks with numpy that
every record has the bytes the SDK writes around its values, and slices all the
values out at once.
"""

import array
import struct
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)

# Field numbers of SageMaker's record.proto.
RECORD_FEATURES = 1
VALUE_FLOAT32, VALUE_FLOAT64, VALUE_INT32 = 2, 3, 7
TENSOR_VALUES, TENSOR_KEYS = 1, 2

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def decode_dense(body: bytes, max_records: int) -> np.ndarray:
    """The rows of a RecordIO-protobuf body, as a 2-D array."""
    rows: List[np.ndarray] = []
    for payload in _frames(body):
        if len(rows) == max_records:
            raise ValueError(f"more than {max_records} records")
        rows.append(_record_row(payload))
    if not rows:
        raise ValueError("no records")
    if any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("records have different lengths")
    return np.vstack(rows)


def decode_same_layout(body: bytes, max_records: int) -> Optional[np.ndarray]:
    """What ``decode_dense`` reads from a body of records laid out as the SDK writes a float32 or float64
    matrix (``None`` for any other body): the same result, read without a Python step per record."""
    if len(body) < 8 or body[:4] != _MAGIC_BYTES:
        return None
    (length,) = struct.unpack_from("<I", body, 4)
    try:
        first = _record_row(body[8 : 8 + length])
    except (ValueError, struct.error):
        return None
    kind = VALUE_FLOAT32 if first.dtype == np.float32 else VALUE_FLOAT64  # an Int32Tensor's layout differs below
    values = first.size * first.dtype.itemsize
    head = _dense_frame_head(kind, values)
    size = len(head) + values + (-(len(head) - 8 + values) % 4)  # a frame: head, values, zeros to 4 bytes
    if len(body) % size:
        return None
    frames = np.frombuffer(body, dtype=np.uint8).reshape(-1, size)
    if (frames[:, : len(head)] != np.frombuffer(head, dtype=np.uint8)).any() or frames[:, len(head) + values :].any():
        return None
    if len(frames) > max_records:
        raise ValueError(f"more than {max_records} records")
    packed = np.ascontiguousarray(frames[:, len(head) : len(head) + values])
    return packed.view(first.dtype.newbyteorder("<")).astype(first.dtype, copy=False)


def _dense_frame_head(kind: int, values: int) -> bytes:
    """The bytes of a frame before its values: the frame header, then the record's features map holding
    'values', a Float32Tensor (kind 2) or Float64Tensor (3) of packed values, as protobuf serialises it."""
    tensor = _length_prefix(TENSOR_VALUES, values)
    value = _length_prefix(kind, len(tensor) + values) + tensor
    entry = _length_prefix(1, 6) + b"values" + _length_prefix(2, len(value) + values) + value
    record = _length_prefix(RECORD_FEATURES, len(entry) + values) + entry
    return struct.pack("<II", MAGIC, len(record) + values) + record


def _length_prefix(number: int, length: int) -> bytes:
    """The key and length of a length-delimited protobuf field."""
    return _varint_bytes(number << 3 | _LENGTH) + _varint_bytes(length)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


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
    for number, value, wire in _fields(payload):
        if number != RECORD_FEATURES:
            continue
        if wire != _LENGTH:
            raise ValueError("a record's features are not a protobuf map")
        entry = _message(value, (1, 2))
        if entry.get(1) == b"values" and 2 in entry:
            return _tensor(_message(entry[2], (VALUE_FLOAT32, VALUE_FLOAT64, VALUE_INT32)))
    raise ValueError("a record has no 'values' feature")


def _tensor(value: Dict[int, bytes]) -> np.ndarray:
    for kind, dtype, wire in ((VALUE_FLOAT32, "<f4", _FIXED32), (VALUE_FLOAT64, "<f8", _FIXED64), (VALUE_INT32, None, _VARINT)):
        if kind in value:
            return _numbers(value[kind], dtype, wire)
    raise ValueError("a record's values are not a float32, float64 or int32 tensor")


def _numbers(tensor: bytes, dtype, wire: int) -> np.ndarray:
    """The values of a tensor message, packed or one field per value, in order."""
    chunks: List = []
    for number, data, data_wire in _fields(tensor):
        if number == TENSOR_KEYS:
            raise ValueError("sparse tensors (with keys) are not supported; send dense rows")
        if number != TENSOR_VALUES:
            continue
        if data_wire == _LENGTH:  # packed
            chunks.append(np.frombuffer(data, dtype=dtype) if dtype else array.array("q", _varints(data)))
        elif data_wire == wire:
            # One value per field: gathered in a typed array (8 bytes a value), not one object each.
            if not chunks or not isinstance(chunks[-1], array.array):
                chunks.append(array.array("d" if dtype else "q"))
            chunks[-1].append(data if dtype else _signed(data))
        else:
            raise ValueError("unexpected encoding of tensor values")
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(chunk) for chunk in chunks]).astype(np.float64 if dtype == "<f8" else np.float32)


def _message(data: bytes, numbers: Tuple[int, ...]) -> Dict[int, bytes]:
    """The first value of each of the fields ``numbers`` (length-delimited); other fields are skipped."""
    fields: Dict[int, bytes] = {}
    for number, value, wire in _fields(data):
        if number in numbers and number not in fields:
            if wire != _LENGTH:
                raise ValueError(f"protobuf field {number} is not length-delimited")
            fields[number] = value
    return fields


def _fields(data: bytes) -> Iterator[Tuple[int, Any, int]]:
    """(field number, value, wire type) of each field of a message."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        value: Any
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
        yield number, value, wire


def _varint(data: bytes, position: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >> 64:  # a tenth byte over 1: not a 64-bit value
                raise ValueError("protobuf varint too large")
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("protobuf varint too long")


def _varints(data: bytes) -> Iterator[int]:
    position = 0
    while position < len(data):
        value, position = _varint(data, position)
        yield _signed(value)


def _signed(value: int) -> int:
    """An int32/int64 varint (negative ones are sign-extended to 64 bits) as a signed int64."""
    return value - (1 << 64) if value >= 1 << 63 else value
