"""Decoding ``application/x-recordio-protobuf`` request bodies: dense records as the SageMaker SDK writes them.

At most ``MAX_ROWS`` records are read (and the bounds of ``limits`` apply to the matrix).
The record format itself is read by ``recordio``: bodies of same-layout records from
``_FAST_FROM`` bytes are sliced at once, others walked record by record.
"""

import numpy as np

from ..runtimes.protocol import MAX_ROWS
from . import recordio
from .limits import _fast_or_exact, _NotFast


def _decode_recordio(body: bytes) -> np.ndarray:
    return _fast_or_exact(_recordio_fast, _recordio_exact, body)


def _recordio_exact(body: bytes) -> np.ndarray:
    return recordio.decode_dense(body, max_records=MAX_ROWS)


def _recordio_fast(body: bytes) -> np.ndarray:
    rows = recordio.decode_same_layout(body, max_records=MAX_ROWS)
    if rows is None:  # records of different layouts (or not records): read one by one
        raise _NotFast
    return rows
