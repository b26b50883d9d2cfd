"""Write dense RecordIO-protobuf records the way the SageMaker SDK's
``write_numpy_to_dense_tensor`` does (one ``Record`` per row, features under
``values`` as a packed ``Float32Tensor``), without the SDK."""

import struct

import numpy as np


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def dense_records(rows: np.ndarray) -> bytes:
    out = bytearray()
    for row in rows:
        tensor = _field(1, row.astype("<f4").tobytes())  # Float32Tensor.values, packed
        value = _field(2, tensor)  # Value.float32_tensor
        entry = _field(1, b"values") + _field(2, value)  # map entry: key, value
        record = _field(1, entry)  # Record.features
        out += struct.pack("<II", 0xCED7230A, len(record)) + record + b"\0" * (-len(record) % 4)
    return bytes(out)
