"""The server's own thread pools, each bounded, so one kind of work cannot starve another.

- ``io``: downloads, unpacking, digests, deletions, store listings, and the waits on
  the isolated checks' children. Waiting on S3, the disk or a child mostly; a slow
  store fills this pool only.
- ``loads``: parsing model files into the runtimes, one per CPU (CPU-bound work that
  holds memory while it runs).

Predictions of big requests have a pool of their own (``offload.BatchPool``);
MLServer's own work stays on the loop's default executor.
"""

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

IO_THREADS = 8  # concurrent downloads and unpackings
LOAD_THREADS = os.cpu_count() or 1

_io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="mme-io")
_loads = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="mme-load")


async def in_io(function: Callable[..., Any], *args, **kwargs) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_io, functools.partial(function, *args, **kwargs))


async def in_loads(function: Callable[..., Any], *args, **kwargs) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_loads, functools.partial(function, *args, **kwargs))
