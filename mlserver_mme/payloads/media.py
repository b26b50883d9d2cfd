"""The request and response content types, and ``media_type`` to read a Content-Type or Accept value."""

from typing import Optional

CSV = "text/csv"
LIBSVM = "text/libsvm"
JSON = "application/json"
NPY = "application/x-npy"
RECORDIO = "application/x-recordio-protobuf"


def media_type(header: Optional[str]) -> str:
    """``text/CSV; charset=utf-8`` -> ``text/csv``."""
    return (header or "").split(";", 1)[0].strip().lower()
