"""The server's own thread pools, each bounded, so one kind of work cannot starve another.

- ``in_io``: downloads, unpacking, digests, deletions, store listings, and the waits on
  the isolated checks' children. Waiting on S3, the disk or a child mostly; a slow
  store fills this pool only.
- ``in_loads``: parsing model files into the runtimes, one at a time per CPU (CPU-bound
  work that holds memory while it runs), each in a thread of its own.

Native libraries keep buffers per thread and per model: XGBoost holds the last answer
and the last serialized model of each booster in the thread that asked for it, and frees
them only from the thread that frees the booster. A pool thread that loaded or predicted
for models since unloaded would keep those buffers for ever; so load threads serve one
load, and ``RecyclingPool`` (also behind ``offload.BatchPool``) replaces its threads every
so many tasks: what is left in a thread goes with it.
"""

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

IO_THREADS = 8  # concurrent downloads and unpackings


class RecyclingPool:
    """At most ``workers`` tasks at once, in threads replaced after ``tasks_per_pool`` tasks."""

    def __init__(self, workers: int, tasks_per_pool: int, name: str):
        self._workers, self._tasks_per_pool, self._name = workers, tasks_per_pool, name
        self._slots = asyncio.Semaphore(workers)  # the bound holds across pool generations
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._tasks = 0

    async def run(self, function: Callable[..., Any], *args, **kwargs) -> Any:
        async with self._slots:
            if self._tasks >= self._tasks_per_pool:
                self._pool.shutdown(wait=False)  # its threads end once their tasks are done
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
                self._tasks = 0
            self._tasks += 1
            call = functools.partial(function, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)


_io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="mme-io")
_loads = RecyclingPool(os.cpu_count() or 1, tasks_per_pool=1, name="mme-load")


async def in_io(function: Callable[..., Any], *args, **kwargs) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_io, functools.partial(function, *args, **kwargs))


async def in_loads(function: Callable[..., Any], *args, **kwargs) -> Any:
    return await _loads.run(function, *args, **kwargs)
