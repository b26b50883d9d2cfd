"""Big requests' work off the event loop.

The event loop answers every connection. A one-row request is cheapest done
right there (a thread hop costs more than its whole decode, predict and
encode), but a batch of megabytes takes tens to hundreds of milliseconds, and
on the loop every other request, ``/ping`` included, would wait that long. A
request body of more than ``INLINE_MAX_BYTES`` is decoded, predicted and encoded
in this pool instead, and so are the prediction and encoding of an answer of
more than ``INLINE_MAX_VALUES`` values: a few threads of its own (not those that
download and load models, ``threads.py``), one per CPU, as XGBoost's prediction and
the C parsers release the GIL. Batches beyond that wait their turn for a thread,
holding only their bodies (at most ``MLSERVER_MME_MAX_PAYLOAD_BYTES`` each).
"""

import os
from typing import Any, Callable, Optional

from ..threads import RecyclingPool

# 64 KiB: about 3,000 CSV rows of six features, a few milliseconds of work inline;
# one-row requests (tens of bytes) are far below it.
INLINE_MAX_BYTES = 64 * 1024


# Threads are replaced after this many batches: what XGBoost keeps per thread for models
# unloaded since goes with them (threads.py); a new thread costs ~0.2 ms, once per 256 batches.
BATCHES_PER_POOL = 256


class BatchPool:
    def __init__(self, workers: int = os.cpu_count() or 1):
        self._pool = RecyclingPool(workers, BATCHES_PER_POOL, name="mme-batch")

    async def run(self, function: Callable[..., Any], *args) -> Any:
        return await self._pool.run(function, *args)


# Values an answer may hold and still be predicted and encoded on the loop: a small body can still ask
# for much (a 64 KiB body of one-feature rows is 32,768 rows; a many-class model multiplies them).
INLINE_MAX_VALUES = 4096


# Tree nodes all rows of a request may visit and still be predicted on the loop: about a millisecond of
# XGBoost's prediction. A model of 10 chain trees 50,000 deep visits 500,000 a row: 2 rows go to the pool.
INLINE_MAX_VISITS = 1_000_000


def is_batch(body: bytes) -> bool:
    return len(body) > INLINE_MAX_BYTES


def is_big_answer(rows: int, values_per_row: int) -> bool:
    return rows * values_per_row > INLINE_MAX_VALUES


def is_costly(rows: int, visits_per_row: Optional[int]) -> bool:
    """Whether predicting ``rows`` may take long, by the model's measured depth (unknown: not said so)."""
    return visits_per_row is not None and rows * visits_per_row > INLINE_MAX_VISITS
