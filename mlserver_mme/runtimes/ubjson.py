"""UBJSON written as XGBoost writes its own ``.ubj`` models, for the legacy binary converter.

XGBoost parses a model's UBJSON about three times faster than its JSON text (the
numbers are stored, not printed), and a converted legacy model is parsed on every
check and every load. XGBoost reads a tree's arrays by their exact types, so each
NumPy array is written as the typed array XGBoost itself writes for that field
(``legacy_binary`` gives every array its type); lists are written as untyped arrays,
as XGBoost writes ``tree_info`` and ``weight_drop``.
"""

import struct
from typing import Any, Callable, Dict

import numpy as np

# a typed array's NumPy type -> UBJSON's marker of its items, and their big-endian NumPy type
_ARRAYS = {
    np.dtype(little): (marker, np.dtype(big))
    for little, marker, big in (("<f4", b"d", ">f4"), ("<i4", b"l", ">i4"), ("<i8", b"L", ">i8"), ("u1", b"U", "u1"))
}
_LENGTH = struct.Struct(">q")
_FLOAT = struct.Struct(">f")
_keys: Dict[str, bytes] = {}  # a key's encoding: models repeat the same few keys in every tree
_MAX_KEYS = 256  # a file's own attribute names are keys too: the cache keeps only the first few


def dumps(value: Any) -> bytes:
    """``value`` (dicts with str keys, str, int, float, bool, lists, 1-D NumPy arrays) as UBJSON bytes."""
    parts: list = []
    _write(value, parts.append)
    return b"".join(parts)


def _key(name: str) -> bytes:
    encoded = _keys.get(name)
    if encoded is None:
        data = name.encode()
        encoded = b"L" + _LENGTH.pack(len(data)) + data  # its length as an int64, as XGBoost writes it
        if len(_keys) < _MAX_KEYS:
            _keys[name] = encoded
    return encoded


def _write(value: Any, put: Callable[[bytes], None]) -> None:
    if isinstance(value, np.ndarray):
        marker, big_endian = _ARRAYS[value.dtype]
        if value.ndim != 1:
            raise TypeError(f"no UBJSON for an array of {value.ndim} dimensions")
        put(b"[$" + marker + b"#L" + _LENGTH.pack(len(value)) + value.astype(big_endian).tobytes())
    elif isinstance(value, dict):
        put(b"{")
        for key, item in value.items():
            put(_key(key))
            _write(item, put)
        put(b"}")
    elif isinstance(value, str):
        data = value.encode()
        put(b"SL" + _LENGTH.pack(len(data)) + data)
    elif isinstance(value, bool):
        put(b"T" if value else b"F")
    elif isinstance(value, (int, np.integer)):
        put(b"L" + _LENGTH.pack(int(value)))
    elif isinstance(value, (float, np.floating)):
        put(b"d" + _FLOAT.pack(value))  # float32: every float of an XGBoost model is one
    elif isinstance(value, list):
        put(b"[#L" + _LENGTH.pack(len(value)))
        for item in value:
            _write(item, put)
    else:
        raise TypeError(f"no UBJSON for {type(value).__name__}")
